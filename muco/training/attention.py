"""Attention layouts of CoMa, CoCoA and isolated turns as 4-D masks (METHODS.md §1, §4, §5),
as pure functions.

Each position of a sequence gets a *segment*; a rule table says, for a (query segment, key
segment) pair, whether the query may attend to the key always (``"full"``), only when the key
is not later (``"causal"``), or never (pairs missing from the table). Padding positions are
segment :data:`PAD`: no query attends to them, and each of them attends only to itself, so that
no softmax row is empty (an all −∞ row would give NaN in sdpa and a uniform, image-reading row
in eager attention).

The boolean ``(B, L, L)`` result has True where query ``i`` may attend to key ``j``.
:func:`additive_mask` turns it into the ``(B, 1, L, L)`` float mask that transformers 5 passes
through unchanged to both the eager and the sdpa attention of Qwen2-VL (a 4-D mask is taken as
already prepared: ``masking_utils._preprocess_mask_arguments`` returns it as is). Eager attention
*adds* the mask to the scores, so a boolean one would be wrong there; a float mask with 0 and
the dtype's minimum works for both, and ``exp(min − max)`` is exactly 0, so a blocked key
contributes nothing at all.

CoMa (METHODS §4, stage 1) segments::

    PREFIX       positions before the first image token (system prompt, "user\\n", vision start)
    VISUAL       from the first image token up to the first compression token: the image and
                 every token that has already attended to it (vision end, the "summarize"
                 instruction, the assistant header)
    COMPRESSION  the n compression tokens
    TEXT         everything after the last compression token (the question/answer turns)

With ``block_image`` (the interpretation in METHODS §4, switchable as in the reference) TEXT may
not attend to VISUAL; everything else is causal. Blocking only the image tokens would not be a
bottleneck: the instruction tokens after the image have read it, and their keys and values would
carry it to the text. So the text sees the image only through the compression tokens.

CoCoA (METHODS §5, interpretation) segments::

    INPUT   everything before the EOS token; bidirectional within itself (switchable)
    EOS     the one token whose hidden state is the embedding; attends to INPUT and itself
    RECON   the reconstruction of the input text; attends to EOS and earlier RECON tokens only

Isolated turns (a project option for MuCo stage 1's target side, see
:class:`muco.config.MucoStage`) segment a multi-turn sequence by turn: the system prefix, then
one segment per turn; each turn attends to the prefix and to itself only. With positions
restarted after the prefix (:func:`muco.training.forward.restart_turn_positions`), each turn's
``<|emb|>`` state equals that of the turn's text alone in the single-turn template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

Rule = Literal["causal", "full"]
Rules = Mapping[tuple[int, int], Rule]

PAD = -1

COMA_PREFIX, COMA_VISUAL, COMA_COMPRESSION, COMA_TEXT = 0, 1, 2, 3
COCOA_INPUT, COCOA_EOS, COCOA_RECON = 0, 1, 2


def segment_attention(segments: Tensor, rules: Rules) -> Tensor:
    """Which query may attend to which key, from per-position segments and a rule table.

    Args:
        segments: ``(B, L)`` long, the segment of every position, :data:`PAD` for padding.
        rules: ``{(query_segment, key_segment): "causal" | "full"}``; a pair that is missing
            may not attend at all.

    Returns:
        ``(B, L, L)`` bool, True where query ``i`` (dim 1) may attend to key ``j`` (dim 2).
    """
    if segments.ndim != 2:
        raise ValueError(f"segments must be (B, L), got shape {tuple(segments.shape)}")
    length = segments.shape[1]
    index = torch.arange(length, device=segments.device)
    causal = index[:, None] >= index[None, :]  # (L, L): key not later than query
    query = segments[:, :, None]
    key = segments[:, None, :]
    allowed = torch.zeros((*segments.shape, length), dtype=torch.bool, device=segments.device)
    for (query_segment, key_segment), rule in rules.items():
        if rule not in ("causal", "full"):
            raise ValueError(f"unknown attention rule {rule!r}")
        pair = (query == query_segment) & (key == key_segment)
        allowed |= pair & causal if rule == "causal" else pair
    padding = segments == PAD
    eye = torch.eye(length, dtype=torch.bool, device=segments.device)
    # A padding query attends to itself only; nothing attends to a padding key.
    allowed = torch.where(padding[:, :, None], eye, allowed & ~padding[:, None, :])
    return allowed


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, L, L)`` bool → ``(B, 1, L, L)`` float: 0 where allowed, the dtype's minimum else.

    The form both eager (added to the scores) and sdpa (``attn_mask`` of a float dtype) take.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def first_index(hits: Tensor) -> Tensor:
    """``(B, L)`` bool → ``(B,)`` long, the first True per row, ``L`` where a row has none."""
    length = hits.shape[1]
    index = torch.arange(length, device=hits.device).expand_as(hits)
    return torch.where(hits, index, length).min(dim=1).values


def _last_index(hits: Tensor) -> Tensor:
    """``(B, L)`` bool → ``(B,)`` long, the last True per row, −1 where a row has none."""
    index = torch.arange(hits.shape[1], device=hits.device).expand_as(hits)
    return torch.where(hits, index, -1).max(dim=1).values


def coma_segments(
    input_ids: Tensor, attention_mask: Tensor, image_token_id: int, comp_token_ids: Sequence[int]
) -> Tensor:
    """CoMa's segments (module docstring) of a batch.

    Args:
        input_ids: ``(B, L)`` long, as the processor returns them (image tokens expanded).
        attention_mask: ``(B, L)``, 1 for real tokens, 0 for padding (either side).
        image_token_id: the id of ``<|image_pad|>``.
        comp_token_ids: the ids of the compression tokens.

    Returns:
        ``(B, L)`` long. A row without compression tokens is PREFIX (and VISUAL from its first
        image token on); a row without an image has no VISUAL positions.
    """
    real = attention_mask.bool()
    comp = torch.isin(input_ids, torch.as_tensor(list(comp_token_ids), device=input_ids.device))
    comp &= real
    length = input_ids.shape[1]
    position = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    first_image = first_index((input_ids == image_token_id) & real)[:, None]
    first_comp = first_index(comp)[:, None]
    last_comp = _last_index(comp)[:, None]
    has_comp = comp.any(dim=1, keepdim=True)
    segments = torch.full_like(input_ids, COMA_PREFIX)
    segments[(position >= first_image) & (position < first_comp)] = COMA_VISUAL
    segments[comp] = COMA_COMPRESSION
    segments[has_comp & (position > last_comp)] = COMA_TEXT
    segments[~real] = PAD
    return segments


def coma_rules(block_image: bool = True) -> dict[tuple[int, int], Rule]:
    """Causal everywhere, except that with ``block_image`` TEXT never sees VISUAL."""
    names = (COMA_PREFIX, COMA_VISUAL, COMA_COMPRESSION, COMA_TEXT)
    rules: dict[tuple[int, int], Rule] = {(q, k): "causal" for q in names for k in names}
    if block_image:
        del rules[(COMA_TEXT, COMA_VISUAL)]
    return rules


def coma_attention(
    input_ids: Tensor,
    attention_mask: Tensor,
    image_token_id: int,
    comp_token_ids: Sequence[int],
    block_image: bool = True,
) -> Tensor:
    """CoMa stage 1's ``(B, L, L)`` bool attention (module docstring, METHODS.md §4)."""
    segments = coma_segments(input_ids, attention_mask, image_token_id, comp_token_ids)
    return segment_attention(segments, coma_rules(block_image))


def cocoa_segments(
    input_ids: Tensor, attention_mask: Tensor, eos_token_id: int, require_eos: bool = True
) -> Tensor:
    """CoCoA's segments: INPUT before the first EOS token, EOS, RECON after it.

    Args:
        input_ids: ``(B, L)`` long.
        attention_mask: ``(B, L)``, 1 for real tokens.
        eos_token_id: the token whose hidden state is the embedding (``<|emb|>`` here).
        require_eos: raise ``ValueError`` when a row has no EOS token; otherwise such a row
            (ZeRO-3's keep-alive row) is all INPUT.

    Returns:
        ``(B, L)`` long.
    """
    real = attention_mask.bool()
    eos_hits = (input_ids == eos_token_id) & real
    if require_eos and not eos_hits.any(dim=1).all():
        rows = (~eos_hits.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no EOS token (id {eos_token_id})")
    eos = first_index(eos_hits)[:, None]
    position = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    segments = torch.full_like(input_ids, COCOA_INPUT)
    segments[position == eos] = COCOA_EOS
    segments[position > eos] = COCOA_RECON
    segments[~real] = PAD
    return segments


def cocoa_rules(bidirectional_input: bool = True) -> dict[tuple[int, int], Rule]:
    """INPUT↔INPUT full (or causal), EOS→INPUT and EOS itself, RECON→EOS and earlier RECON."""
    return {
        (COCOA_INPUT, COCOA_INPUT): "full" if bidirectional_input else "causal",
        (COCOA_EOS, COCOA_INPUT): "full",
        (COCOA_EOS, COCOA_EOS): "causal",
        (COCOA_RECON, COCOA_EOS): "full",
        (COCOA_RECON, COCOA_RECON): "causal",
    }


def cocoa_attention(
    input_ids: Tensor,
    attention_mask: Tensor,
    eos_token_id: int,
    bidirectional_input: bool = True,
    require_eos: bool = True,
) -> Tensor:
    """CoCoA stage 1's ``(B, L, L)`` bool attention (module docstring, METHODS.md §5)."""
    segments = cocoa_segments(input_ids, attention_mask, eos_token_id, require_eos)
    return segment_attention(segments, cocoa_rules(bidirectional_input))


def turn_segments(input_ids: Tensor, attention_mask: Tensor, im_start_token_id: int) -> Tensor:
    """Segments of a multi-turn sequence (:func:`muco.model.templates.multi_turn`) by turn.

    Segment 0 is the prefix (the system turn); segment ``1 + j`` is turn j: its user turn and
    the assistant answer that holds its ``<|emb|>``. Turns are told apart by counting
    ``<|im_start|>`` tokens (the system turn opens with the first, each turn with two more),
    which needs no other token id and holds for every tokenizer with the chat template.

    Args:
        input_ids: ``(B, L)`` long.
        attention_mask: ``(B, L)``, 1 for real tokens (either padding side).
        im_start_token_id: the id of ``<|im_start|>``.

    Returns:
        ``(B, L)`` long; :data:`PAD` at padding. A row with a single turn opener (ZeRO-3's
        keep-alive row) is all prefix.
    """
    real = attention_mask.bool()
    opened = ((input_ids == im_start_token_id) & real).long().cumsum(dim=1)
    segments = torch.where(opened >= 2, 1 + (opened - 2) // 2, 0)
    return segments.masked_fill(~real, PAD)


def isolated_turn_rules(turns: int) -> dict[tuple[int, int], Rule]:
    """Each turn sees the prefix and itself, causally; no turn sees another turn."""
    rules: dict[tuple[int, int], Rule] = {(0, 0): "causal"}
    for segment in range(1, turns + 1):
        rules[(segment, 0)] = "causal"
        rules[(segment, segment)] = "causal"
    return rules


def isolated_turn_attention(segments: Tensor) -> Tensor:
    """``(B, L, L)`` bool attention of :func:`isolated_turn_rules` for :func:`turn_segments`."""
    turns = int(segments.max()) if segments.numel() else 0
    return segment_attention(segments, isolated_turn_rules(turns))
