"""Backbone forward passes with custom 4-D attention, and the readouts the methods train on.

``Embedder.forward_embeddings`` is MuCo's path: plain causal attention, the hidden state at each
``<|emb|>``. CoMa and CoCoA need more (METHODS.md §4, §5): an attention layout of their own
(:mod:`muco.training.attention`), the mean over the compression tokens, and next-token losses.

**4-D masks in transformers 5's Qwen2-VL.** ``Qwen2VLModel.forward`` hands ``attention_mask`` to
two places: to M-RoPE's ``compute_3d_position_ids`` (which reads it as the 2-D padding mask,
``attention_mask[b].bool()`` per row) and to the language model, whose mask builder returns a
4-D mask unchanged (``masking_utils._preprocess_mask_arguments``). So :func:`backbone_hidden`
first computes the position ids from the 2-D padding mask exactly as the model would (the image
path through ``compute_3d_position_ids``, text-only rows numbered over real tokens as
``Embedder`` does), then passes the 4-D mask. The mask is additive float in the model's dtype,
which eager attention adds to its scores and sdpa takes as ``attn_mask``; flash-attention 2
accepts no 4-D mask, so it is refused. With a 4-D mask equal to "causal + padding" the hidden
states equal the 2-D path's (tested).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muco.training.attention import additive_mask, first_index
from muco.training.losses import next_token_loss_sum, next_token_targets


def text_position_ids(attention_mask: Tensor) -> Tensor:
    """Positions (B, L) counting real tokens only (as ``muco.model.embedder`` numbers them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def default_position_ids(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """The positions the model gives a processed batch under its 2-D padding mask.

    With an image, M-RoPE's ``(3, B, L)`` from ``compute_3d_position_ids``; text only,
    ``(B, L)`` numbering real tokens (as ``Embedder`` does, so the padding side does not matter).
    """
    padding = batch["attention_mask"]
    if "pixel_values" not in batch:
        return text_position_ids(padding)
    return model.model.compute_3d_position_ids(
        input_ids=batch["input_ids"],
        image_grid_thw=batch.get("image_grid_thw"),
        video_grid_thw=None,
        inputs_embeds=None,
        attention_mask=padding,
        cache=None,
        mm_token_type_ids=batch.get("mm_token_type_ids"),
    )


def restart_turn_positions(position_ids: Tensor, segments: Tensor) -> Tensor:
    """Positions of isolated turns: every turn numbered as if it came first after the prefix.

    Turn 0 (segment 1) keeps its positions; each later turn is shifted so that its first token
    takes turn 0's first position. Together with :func:`muco.training.attention.
    isolated_turn_attention` a turn is then computed exactly as its text alone in the
    single-turn template (RoPE sees the same offsets). Text tokens have equal M-RoPE
    components, and images sit only in turn 0, so one shift serves all three components.

    Args:
        position_ids: ``(B, L)`` or ``(3, B, L)`` long, e.g. :func:`default_position_ids`.
        segments: ``(B, L)`` long from :func:`muco.training.attention.turn_segments`.

    Returns:
        A tensor shaped like ``position_ids``.
    """
    positions = position_ids if position_ids.ndim == 3 else position_ids[None]  # (C, B, L)
    restarted = positions.clone()
    turn_zero = _position_at(positions, first_index(segments == 1))  # (C, B, 1)
    for segment in range(2, int(segments.max()) + 1):
        in_turn = segments == segment
        shift = turn_zero - _position_at(positions, first_index(in_turn))
        restarted = torch.where(in_turn[None], positions + shift, restarted)
    return restarted if position_ids.ndim == 3 else restarted[0]


def _position_at(positions: Tensor, index: Tensor) -> Tensor:
    """``positions`` (C, B, L) at one index per row (B,) → (C, B, 1); an index past the end
    (a row without that segment) reads the last position, which no masked token uses."""
    index = index.clamp(max=positions.shape[-1] - 1)
    return positions.gather(-1, index[None, :, None].expand(positions.shape[0], -1, 1))


def backbone_hidden(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    attention: Tensor | None = None,
    *,
    layer: int | None = None,
) -> Tensor:
    """Hidden states ``(B, L, D)`` of a processed batch, optionally under a custom attention.

    Args:
        model: a ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VL...`` (its ``.model`` runs).
        batch: the processor's output: ``input_ids``, ``attention_mask`` (B, L), and with images
            ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``.
        attention: optional ``(B, L, L)`` bool, True where query i may attend to key j
            (:mod:`muco.training.attention`); None is the model's own causal + padding mask.
        layer: return the output of this many decoder layers (0 = input embeddings) instead
            of the final, normed last hidden state; for tests that look inside.

    Returns:
        ``(B, L, D)`` in the model's dtype, with gradient.
    """
    inner = model.model
    inputs = dict(batch)
    padding = inputs["attention_mask"]
    has_image = "pixel_values" in inputs
    if attention is not None:
        if model.config._attn_implementation not in ("eager", "sdpa"):
            raise ValueError(
                "custom attention masks need attn_implementation 'eager' or 'sdpa', not "
                f"{model.config._attn_implementation!r}"
            )
        if "position_ids" not in inputs:
            inputs["position_ids"] = default_position_ids(model, inputs)
        # sdpa wants a float mask in the query's dtype: the model's (bf16 under DeepSpeed bf16).
        inputs["attention_mask"] = additive_mask(attention.to(padding.device), model.dtype)
    elif not has_image and "position_ids" not in inputs:
        inputs["position_ids"] = text_position_ids(padding)
    if layer is None:
        return inner(**inputs, use_cache=False).last_hidden_state
    outputs = inner(**inputs, use_cache=False, output_hidden_states=True)
    return outputs.hidden_states[layer]


def token_embeddings(hidden: Tensor, positions: Tensor) -> Tensor:
    """L2-normalised float32 rows of ``hidden`` (B, L, D) where ``positions`` (B, L) is True,
    in row-major order (MuCo's readout at ``<|emb|>``, CoCoA's at EOS)."""
    return F.normalize(hidden[positions].float(), dim=-1)


def next_token_nll_sum(model: nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    """Summed next-token NLL of the labelled tokens: position p's logits predict label p + 1.

    Logits are computed only where a token is predicted (a 150k-wide vocabulary over every
    position of a batch would dominate memory), through the model's own ``lm_head``.
    """
    positions, targets = next_token_targets(labels.to(hidden.device))
    logits = model.lm_head(hidden[positions])
    return next_token_loss_sum(logits, targets)
