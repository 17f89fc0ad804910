"""CoMa's and CoCoA's attention masks, checked position by position against METHODS.md §4, §5.

The expected matrices are written from the spec's sentences with plain loops over (i, j), not
from the rule tables the implementation uses.
"""

from __future__ import annotations

import torch

from muco.training.attention import (
    COCOA_EOS,
    COCOA_INPUT,
    COCOA_RECON,
    COMA_COMPRESSION,
    COMA_PREFIX,
    COMA_TEXT,
    COMA_VISUAL,
    PAD,
    additive_mask,
    cocoa_attention,
    cocoa_segments,
    coma_attention,
    coma_segments,
    segment_attention,
)

IMG, C1, C2, EOS = 90, 91, 92, 93
#          system  user  vstart  img  img  vend  summ  asst  c1  c2  q   a   end  pad pad
CO_MA_ROW = [1, 2, 3, IMG, IMG, 4, 5, 6, C1, C2, 7, 8, 9, 0, 0]
CO_MA_MASK = [1] * 13 + [0, 0]


def _coma_expected(length: int, real: int, block_image: bool) -> torch.Tensor:
    first_image, first_comp, last_comp = 3, 8, 9
    expected = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            if i >= real:  # padding query: itself only
                expected[i, j] = i == j
                continue
            if j >= real or j > i:  # never padding keys, never the future
                continue
            after_comp = i > last_comp
            sees_image_side = first_image <= j < first_comp  # the image and what read it
            expected[i, j] = not (block_image and after_comp and sees_image_side)
    return expected


def test_coma_segments_by_position() -> None:
    ids = torch.tensor([CO_MA_ROW])
    mask = torch.tensor([CO_MA_MASK])
    segments = coma_segments(ids, mask, IMG, [C1, C2])[0].tolist()
    p, v, c, t = COMA_PREFIX, COMA_VISUAL, COMA_COMPRESSION, COMA_TEXT
    assert segments == [p, p, p, v, v, v, v, v, c, c, t, t, t, PAD, PAD]


def test_coma_mask_blocks_text_from_the_image_side_only() -> None:
    ids = torch.tensor([CO_MA_ROW])
    mask = torch.tensor([CO_MA_MASK])
    allowed = coma_attention(ids, mask, IMG, [C1, C2], block_image=True)[0]
    expected = _coma_expected(len(CO_MA_ROW), 13, block_image=True)
    assert torch.equal(allowed, expected)
    # Spot checks read straight from METHODS §4.
    assert not allowed[10, 3] and not allowed[12, 4]  # answers do not see image tokens
    assert not allowed[10, 6]  # nor the instruction that has read the image
    assert allowed[10, 8] and allowed[10, 9]  # they see the compression tokens
    assert allowed[10, 0]  # and the prefix, which never saw the image
    assert allowed[8, 3] and allowed[9, 7]  # compression tokens see the image side


def test_coma_mask_switched_off_is_plain_causal_with_padding() -> None:
    ids = torch.tensor([CO_MA_ROW])
    mask = torch.tensor([CO_MA_MASK])
    allowed = coma_attention(ids, mask, IMG, [C1, C2], block_image=False)[0]
    assert torch.equal(allowed, _coma_expected(len(CO_MA_ROW), 13, block_image=False))


def test_coma_mask_under_left_padding() -> None:
    row = [0, 0, *CO_MA_ROW[:13]]
    attention = [0, 0, *[1] * 13]
    allowed = coma_attention(torch.tensor([row]), torch.tensor([attention]), IMG, [C1, C2])[0]
    shifted = _coma_expected(13, 13, block_image=True)
    assert torch.equal(allowed[2:, 2:], shifted)
    assert torch.equal(allowed[:2], torch.eye(15, dtype=torch.bool)[:2])
    assert not allowed[2:, :2].any()


def _cocoa_expected(
    length: int, eos: int, real: int, bidirectional: bool, start: int = 0
) -> torch.Tensor:
    expected = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            if not start <= i < real:
                expected[i, j] = i == j
                continue
            if not start <= j < real:
                continue
            if i < eos:  # input: bidirectional within the input, nothing after it
                expected[i, j] = j < eos and (bidirectional or j <= i)
            elif i == eos:  # EOS: the input and itself
                expected[i, j] = j <= eos
            else:  # reconstruction: EOS and earlier reconstruction tokens, never the input
                expected[i, j] = eos <= j <= i
    return expected


def test_cocoa_segments_and_mask_by_position() -> None:
    #        input..............  eos  recon.....  pad
    row = [1, 2, IMG, IMG, 3, 4, EOS, 5, 6, 7, 0]
    attention = [1] * 10 + [0]
    ids, mask = torch.tensor([row]), torch.tensor([attention])
    i, e, r = COCOA_INPUT, COCOA_EOS, COCOA_RECON
    assert cocoa_segments(ids, mask, EOS)[0].tolist() == [i] * 6 + [e, r, r, r, PAD]
    for bidirectional in (True, False):
        allowed = cocoa_attention(ids, mask, EOS, bidirectional_input=bidirectional)[0]
        assert torch.equal(allowed, _cocoa_expected(11, 6, 10, bidirectional))
    allowed = cocoa_attention(ids, mask, EOS)[0]
    assert allowed[0, 5] and allowed[2, 4]  # input sees later input
    assert not allowed[7, 0] and not allowed[9, 3]  # reconstruction never sees the input
    assert allowed[8, 6] and allowed[8, 7] and not allowed[8, 9]
    assert not allowed[3, 6]  # input does not see EOS


def test_cocoa_mask_batch_of_two_with_different_eos_positions() -> None:
    rows = [[1, 2, 3, EOS, 5, 6], [0, 1, EOS, 5, 6, 7]]
    attention = [[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    allowed = cocoa_attention(torch.tensor(rows), torch.tensor(attention), EOS)
    assert torch.equal(allowed[0], _cocoa_expected(6, 3, 5, True))
    assert torch.equal(allowed[1], _cocoa_expected(6, 2, 6, True, start=1))


def test_cocoa_without_eos_is_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="no EOS"):
        cocoa_segments(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 1]]), EOS)


def test_additive_mask_values_and_shape() -> None:
    allowed = segment_attention(torch.tensor([[0, 0, PAD]]), {(0, 0): "causal"})
    additive = additive_mask(allowed, torch.float32)
    assert additive.shape == (1, 1, 3, 3)
    low = torch.finfo(torch.float32).min
    assert additive[0, 0].tolist() == [[0.0, low, low], [0.0, 0.0, low], [low, low, 0.0]]
