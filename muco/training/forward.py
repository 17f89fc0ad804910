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

import torch.nn.functional as F
from torch import Tensor, nn

from muco.training.attention import additive_mask
from muco.training.losses import next_token_loss_sum, next_token_targets


def text_position_ids(attention_mask: Tensor) -> Tensor:
    """Positions (B, L) counting real tokens only (as ``muco.model.embedder`` numbers them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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
            if has_image:
                inputs["position_ids"] = inner.compute_3d_position_ids(
                    input_ids=inputs["input_ids"],
                    image_grid_thw=inputs.get("image_grid_thw"),
                    video_grid_thw=None,
                    inputs_embeds=None,
                    attention_mask=padding,
                    past_key_values=None,
                    mm_token_type_ids=inputs.get("mm_token_type_ids"),
                )
            else:
                inputs["position_ids"] = text_position_ids(padding)
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
