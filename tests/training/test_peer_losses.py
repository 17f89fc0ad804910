"""The peers' losses (METHODS.md §3-5) and MuCo stage 2's mask, against hand computations and
``F.kl_div`` / ``F.cross_entropy``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from muco.training.losses import (
    distillation_loss,
    hard_negative_loss,
    info_nce,
    muco_stage2_loss,
    next_token_loss_sum,
    next_token_targets,
    select_hard_negatives,
)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


# --------------------------------------------------------------------------- UniME stage 1


def test_distillation_equals_kl_div_batchmean() -> None:
    sq, st = _unit(5, 8, seed=1), _unit(5, 8, seed=2)
    tq, tt = _unit(5, 4, seed=3), _unit(5, 4, seed=4)
    loss = distillation_loss(sq, st, tq, tt, student_temperature=0.05, teacher_temperature=0.1)
    expected = F.kl_div(
        F.log_softmax(sq @ st.T / 0.05, dim=1),
        F.log_softmax(tq @ tt.T / 0.1, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    torch.testing.assert_close(loss, expected)


def test_distillation_by_hand_on_two_pairs() -> None:
    # Student similarities [[1, 0], [0, 1]] at τ = 1; teacher [[0.5, 0.5], [0, 0]] at τ = 1.
    sq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    st = sq.clone()
    tq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tt = torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    p_teacher = [[0.5, 0.5], [0.5, 0.5]]
    e = math.e
    p_student = [[e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]]
    expected = (
        sum(
            p * math.log(p / q)
            for row_t, row_s in zip(p_teacher, p_student, strict=True)
            for p, q in zip(row_t, row_s, strict=True)
        )
        / 2
    )
    loss = distillation_loss(sq, st, tq, tt, 1.0, 1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_distillation_is_zero_when_the_distributions_agree_and_has_no_teacher_gradient() -> None:
    sq, st = _unit(4, 6, seed=5), _unit(4, 6, seed=6)
    tq, tt = sq.clone().requires_grad_(), st.clone().requires_grad_()
    loss = distillation_loss(sq, st, tq, tt, 0.1, 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert not loss.requires_grad  # only teacher tensors carry grad, and the teacher is constant


# --------------------------------------------------------------------------- UniME stage 2


def test_filter_drops_false_negatives_and_keeps_the_hardest() -> None:
    # Positive similarity 0.5; α = 0.1 drops 0.9 and 0.61 (> 0.6), keeps 0.6 (not > 0.6).
    similarities = torch.tensor([[0.5, 0.9, 0.61, 0.6, 0.2, 0.4, -0.3]])
    indices, valid = select_hard_negatives(similarities, torch.tensor([0]), margin=0.1, k=3)
    assert indices.tolist() == [[3, 5, 4]] and valid.all()


def test_filter_with_fewer_than_k_left_uses_what_remains_and_never_readmits() -> None:
    similarities = torch.tensor([[0.9, 0.1, 0.99, 0.3]])  # positive column 1
    indices, valid = select_hard_negatives(similarities, torch.tensor([1]), margin=0.1, k=8)
    # 0.9, 0.99 and 0.3 all exceed 0.1 + α: every candidate is a false negative.
    assert indices.shape == (1, 8) and not valid.any()

    similarities = torch.tensor([[0.15, 0.1, 0.99, 0.2, -0.5]])  # positive column 1
    indices, valid = select_hard_negatives(similarities, torch.tensor([1]), margin=0.1, k=8)
    assert valid.tolist() == [[True, True, True] + [False] * 5]
    assert indices[0, :3].tolist() == [3, 0, 4]  # 0.2, 0.15, -0.5; column 2 stays out


def test_filter_respects_the_mask_and_breaks_ties_by_column() -> None:
    similarities = torch.tensor([[0.3, 0.3, 0.3, 0.9, 0.3]])
    mask = torch.tensor([[False, True, False, False, False]])
    indices, valid = select_hard_negatives(similarities, torch.tensor([3]), 0.1, 2, mask)
    assert indices.tolist() == [[0, 2]] and valid.all()


def test_hard_negative_loss_equals_cross_entropy_over_selected_columns() -> None:
    queries, targets = _unit(3, 16, seed=7), _unit(10, 16, seed=8)
    positives = torch.tensor([0, 4, 9])
    similarities = queries @ targets.T
    loss = hard_negative_loss(queries, targets, positives, temperature=0.02, margin=0.1, k=4)
    rows = []
    for i, positive in enumerate(positives.tolist()):
        candidates = [
            j
            for j in range(10)
            if j != positive and similarities[i, j] <= similarities[i, positive] + 0.1
        ]
        hardest = sorted(candidates, key=lambda j: -similarities[i, j].item())[:4]
        logits = similarities[i, [positive, *hardest]] / 0.02
        rows.append(F.cross_entropy(logits[None], torch.tensor([0])))
    torch.testing.assert_close(loss, torch.stack(rows).mean())


def test_hard_negative_loss_when_all_are_filtered_is_zero_for_that_row() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    # Row 0: positive target 0 has similarity 0, the other target 1 (a false negative).
    # Row 1: positive target 0 has similarity 1, target 1 has 0: a real negative.
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    positives = torch.tensor([0, 0])
    loss = hard_negative_loss(queries, targets, positives, temperature=0.5, margin=0.1, k=8)
    row1 = -2.0 + math.log(math.exp(2.0) + math.exp(0.0))
    assert loss.item() == pytest.approx((0.0 + row1) / 2, abs=1e-12)
    loss.backward()
    assert queries.grad is not None and torch.all(queries.grad[0] == 0)


def test_hard_negative_loss_with_k_covering_all_equals_info_nce_after_filtering() -> None:
    queries, targets = _unit(4, 8, seed=9), _unit(4, 8, seed=10)
    positives = torch.arange(4)
    similarities = queries @ targets.T
    false_negative = similarities > similarities.diagonal()[:, None] + 0.1
    expected = info_nce(queries, targets, positives, 0.02, false_negative)
    loss = hard_negative_loss(queries, targets, positives, 0.02, 0.1, k=3)
    torch.testing.assert_close(loss, expected)


# --------------------------------------------------------------------------- next-token


def test_next_token_targets_shift_by_one() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, 8, 9]])
    positions, targets = next_token_targets(labels)
    assert positions.tolist() == [
        [False, True, True, False, False],
        [True, False, True, True, False],
    ]
    assert targets.tolist() == [5, 6, 7, 8, 9]


def test_next_token_loss_sum_equals_cross_entropy_sum() -> None:
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 10, 2, 2, 5])
    expected = F.cross_entropy(logits, targets, reduction="sum")
    torch.testing.assert_close(next_token_loss_sum(logits, targets), expected)
    by_hand = sum(-F.log_softmax(logits[i], dim=0)[t] for i, t in enumerate(targets.tolist()))
    torch.testing.assert_close(next_token_loss_sum(logits, targets), by_hand)


# --------------------------------------------------------------------------- MuCo stage 2


def test_stage2_mask_removes_the_same_candidates_in_all_four_terms() -> None:
    q, q_aux, t, t_aux, negatives = (_unit(3, 6, seed=s) for s in range(11, 16))
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 1] = mask[2, 4] = True
    positives = torch.arange(3)
    expected = sum(
        info_nce(query, torch.cat([target, negatives]), positives, 0.02, mask)
        for query in (q, q_aux)
        for target in (t, t_aux)
    )
    torch.testing.assert_close(
        muco_stage2_loss(q, q_aux, t, t_aux, negatives, 0.02, mask), expected
    )
