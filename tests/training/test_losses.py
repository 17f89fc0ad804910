"""MuCo's contrastive losses against cross-entropy assembled by hand (METHODS.md §1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from muco.training.losses import (
    duplicate_text_mask,
    info_nce,
    muco_loss,
    muco_stage2_loss,
    same_image_mask,
)

TAU = 0.02


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def test_info_nce_equals_cross_entropy_without_mask() -> None:
    queries, targets = _unit(5, 8, seed=1), _unit(7, 8, seed=2)
    positives = torch.tensor([3, 0, 6, 1, 1])
    expected = F.cross_entropy(queries @ targets.T / TAU, positives)
    torch.testing.assert_close(info_nce(queries, targets, positives, TAU), expected)


def test_info_nce_by_hand_on_two_by_three() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    positives = torch.tensor([1, 0])
    # τ = 0.5, so logits = 2·(q·t): row 0 = [1.2, 2.0, 0.0], row 1 = [1.6, 0.0, -2.0].
    row0 = -2.0 + math.log(math.exp(1.2) + math.exp(2.0) + math.exp(0.0))
    row1 = -1.6 + math.log(math.exp(1.6) + math.exp(0.0) + math.exp(-2.0))
    expected = (row0 + row1) / 2
    assert info_nce(queries, targets, positives, 0.5).item() == pytest.approx(expected, abs=1e-12)


def test_masking_a_target_equals_deleting_its_column() -> None:
    queries, targets = _unit(4, 6, seed=3), _unit(5, 6, seed=4)
    positives = torch.tensor([0, 1, 3, 4])
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 2] = True
    kept = [0, 1, 3, 4]
    logits = (queries @ targets.T / TAU)[:, kept]
    # After deleting column 2, columns 3 and 4 shift one to the left.
    expected = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(info_nce(queries, targets, positives, TAU, mask), expected)


def test_masking_the_positive_raises() -> None:
    queries, targets = _unit(2, 4, seed=5), _unit(3, 4, seed=6)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 2] = True
    with pytest.raises(ValueError, match="positive"):
        info_nce(queries, targets, torch.tensor([0, 2]), TAU, mask)


def test_same_image_mask_masks_siblings_not_positives() -> None:
    ids = ["a"] * 3 + ["b"] * 3
    mask = same_image_mask(ids, ids, torch.arange(6))
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[:3, :3] = True
    expected[3:, 3:] = True
    expected.fill_diagonal_(False)
    assert torch.equal(mask, expected)


def test_same_image_mask_follows_the_hash_across_records() -> None:
    # Records 0 and 2 hold the same image (same content hash), one turn each.
    ids = ["h1", "h2", "h1"]
    mask = same_image_mask(ids, ids, torch.arange(3))
    expected = torch.tensor([[False, False, True], [False, False, False], [True, False, False]])
    assert torch.equal(mask, expected)


def test_same_image_mask_accepts_tensor_ids() -> None:
    ids = torch.tensor([7, 7, 9])
    strings = ["x", "x", "y"]
    positives = torch.arange(3)
    assert torch.equal(
        same_image_mask(ids, ids, positives), same_image_mask(strings, strings, positives)
    )


def test_duplicate_text_mask() -> None:
    texts = ["red", "Three", " RED ", "blue  sky", "three"]
    mask = duplicate_text_mask(texts, torch.arange(5))
    expected = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 2), (2, 0), (1, 4), (4, 1)]:
        expected[i, j] = True
    assert torch.equal(mask, expected)


def _hand_muco(queries: torch.Tensor, targets: torch.Tensor, image: list[int]) -> torch.Tensor:
    """Cross-entropy with -inf on every same-image target except the positive."""
    logits = queries @ targets.T / TAU
    for i in range(len(image)):
        for j in range(len(image)):
            if i != j and image[i] == image[j]:
                logits[i, j] = float("-inf")
    return F.cross_entropy(logits, torch.arange(len(image)))


def test_muco_loss_with_k_turns_masks_siblings() -> None:
    k, images = 3, 2
    queries, targets = _unit(images * k, 8, seed=7), _unit(images * k, 8, seed=8)
    image = [i // k for i in range(images * k)]
    ids = [f"hash{i}" for i in image]
    expected = _hand_muco(queries, targets, image)
    torch.testing.assert_close(muco_loss(queries, targets, ids, ids, TAU), expected)
    # Without the mask the siblings would count as negatives and the loss would differ.
    plain = info_nce(queries, targets, torch.arange(images * k), TAU)
    assert not torch.isclose(plain, expected)


def test_muco_loss_with_hard_negatives_keeps_the_own_images_negatives() -> None:
    k, images = 2, 2
    queries, targets = _unit(images * k, 8, seed=21), _unit(images * k, 8, seed=22)
    negatives = _unit(images * k, 8, seed=23)
    image = [i // k for i in range(images * k)]
    ids = [f"hash{i}" for i in image]
    # Columns: the 4 targets (siblings at -inf), then all 4 negatives, the own image's included.
    logits = torch.cat([queries @ targets.T, queries @ negatives.T], dim=1) / TAU
    for i in range(4):
        for j in range(4):
            if i != j and image[i] == image[j]:
                logits[i, j] = float("-inf")
    expected = F.cross_entropy(logits, torch.arange(4))
    loss = muco_loss(queries, targets, ids, ids, TAU, hard_negatives=negatives)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, muco_loss(queries, targets, ids, ids, TAU))


def test_muco_loss_negative_mask_removes_a_negative_by_hand() -> None:
    # One query, one target, two negatives; τ = 0.5 so logits = 2·(q·c).
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    negatives = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    both = -1.2 + math.log(math.exp(1.2) + math.exp(2.0) + math.exp(0.0))
    second_only = -1.2 + math.log(math.exp(1.2) + math.exp(0.0))
    loss = muco_loss(query, target, ["a"], ["a"], 0.5, hard_negatives=negatives)
    assert loss.item() == pytest.approx(both)
    mask = torch.tensor([[True, False]])
    masked = muco_loss(
        query, target, ["a"], ["a"], 0.5, hard_negatives=negatives, negative_mask=mask
    )
    assert masked.item() == pytest.approx(second_only)


def test_muco_loss_negative_mask_needs_negatives() -> None:
    queries = _unit(2, 4, seed=24)
    with pytest.raises(ValueError, match="without hard_negatives"):
        muco_loss(queries, queries, ["a", "b"], ["a", "b"], TAU, negative_mask=torch.zeros(2, 2))


def test_symmetric_muco_loss_averages_both_directions() -> None:
    queries, targets = _unit(6, 8, seed=9), _unit(6, 8, seed=10)
    image = [0, 0, 1, 1, 2, 2]
    ids = [str(i) for i in image]
    forward = _hand_muco(queries, targets, image)
    reverse = _hand_muco(targets, queries, image)
    loss = muco_loss(queries, targets, ids, ids, TAU, symmetric=True)
    torch.testing.assert_close(loss, (forward + reverse) / 2)


def test_muco_loss_applies_extra_mask() -> None:
    queries, targets = _unit(4, 8, seed=11), _unit(4, 8, seed=12)
    ids = ["a", "b", "c", "d"]
    extra = duplicate_text_mask(["red", "blue", "red", "green"], torch.arange(4))
    # Rows 0 and 2 share the text "red": each loses the other's column.
    kept = {0: [0, 1, 3], 1: [0, 1, 2, 3], 2: [1, 2, 3], 3: [0, 1, 2, 3]}
    logits = queries @ targets.T / TAU
    terms = [
        F.cross_entropy(logits[i, columns][None], torch.tensor([columns.index(i)]))
        for i, columns in kept.items()
    ]
    expected = torch.stack(terms).mean()
    loss = muco_loss(queries, targets, ids, ids, TAU, extra_mask=extra)
    torch.testing.assert_close(loss, expected)


def test_single_turn_is_plain_info_nce() -> None:
    queries, targets = _unit(5, 8, seed=13), _unit(5, 8, seed=14)
    ids = [f"img{i}" for i in range(5)]
    expected = info_nce(queries, targets, torch.arange(5), TAU)
    torch.testing.assert_close(muco_loss(queries, targets, ids, ids, TAU), expected)


def test_stage2_loss_is_the_sum_of_four_cross_entropies() -> None:
    n, d = 4, 8
    q, q_aux = _unit(n, d, seed=15), _unit(n, d, seed=16)
    t, t_aux = _unit(n, d, seed=17), _unit(n, d, seed=18)
    negatives = _unit(n, d, seed=19)
    positives = torch.arange(n)
    expected = sum(
        F.cross_entropy(query @ torch.cat([target, negatives]).T / TAU, positives)
        for query, target in [(q, t), (q, t_aux), (q_aux, t), (q_aux, t_aux)]
    )
    torch.testing.assert_close(muco_stage2_loss(q, q_aux, t, t_aux, negatives, TAU), expected)
