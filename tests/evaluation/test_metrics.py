"""Ranking metrics against hand-counted cases: ties, several positives, pools, chance."""

from __future__ import annotations

import numpy as np
import pytest

from muco.evaluation.metrics import (
    chance_rate,
    hit_rate,
    rank_of_best_positive,
    score_task,
    task_ranks,
)
from muco.evaluation.tasks import EvalItem, RankingTask


def _texts(*names: str) -> tuple[EvalItem, ...]:
    return tuple(EvalItem(text=name) for name in names)


def _arrays(*lists: list[int]) -> tuple[np.ndarray, ...]:
    return tuple(np.array(values, dtype=np.int64) for values in lists)


def test_rank_counts_negatives_at_or_above_the_best_positive() -> None:
    scores = np.array([0.5, 0.9, 0.1, 0.7])
    assert rank_of_best_positive(scores, np.array([0])) == 3  # 0.9 and 0.7 beat it
    assert rank_of_best_positive(scores, np.array([1])) == 1
    # Several positives: the best one counts, other positives never push it down.
    assert rank_of_best_positive(scores, np.array([0, 3])) == 2
    assert rank_of_best_positive(scores, np.array([1, 3])) == 1


def test_ties_count_against_the_positive() -> None:
    assert rank_of_best_positive(np.array([0.5, 0.5, 0.5]), np.array([0])) == 3
    assert rank_of_best_positive(np.array([0.5, 0.5, 0.1]), np.array([0])) == 2


def test_empty_candidates_or_positives_are_errors() -> None:
    with pytest.raises(ValueError, match="empty candidate list"):
        rank_of_best_positive(np.array([]), np.array([0]))
    with pytest.raises(ValueError, match="no positive"):
        rank_of_best_positive(np.array([0.1]), np.array([], dtype=np.int64))


def test_hit_rate_by_hand() -> None:
    ranks = np.array([1, 2, 5, 11])
    assert hit_rate(ranks, 1) == 25.0
    assert hit_rate(ranks, 5) == 75.0
    assert hit_rate(ranks, 10) == 75.0
    with pytest.raises(ValueError, match="k must be positive"):
        hit_rate(ranks, 0)


def test_per_query_lists_score_like_mmeb() -> None:
    # Candidates a, b, c, d as unit vectors; queries point at a, then between b and c.
    candidates = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=np.float32)
    task = RankingTask(
        benchmark="toy",
        name="Toy",
        meta_task="classification",
        group="ind",
        queries=_texts("q0", "q1"),
        candidates=_texts("a", "b", "c", "d"),
        candidate_lists=_arrays([0, 1, 3], [2, 1, 3]),
        positives=_arrays([0], [2]),
    )
    # q0: a scores 1, the rest 0: rank 1. q1: c and b tie at 1: the tie goes against c.
    assert task_ranks(task, queries, candidates).tolist() == [1, 2]
    score = score_task(task, queries, candidates)
    assert score.values == {"hit@1": 50.0}
    assert score.score == 50.0
    assert score.chance == pytest.approx(100 / 3)


def test_shared_pool_recall_at_k_and_chance() -> None:
    candidates = np.eye(5, dtype=np.float32)
    # q0 ranks 4 > 3 > 2 > 1 > 0; its positives are 1 and 0 (ranks 4 and 5: best is 4).
    queries = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.9, 0, 0, 0, 0]], dtype=np.float32)
    task = RankingTask(
        benchmark="toy",
        name="Pool",
        meta_task="qt->ct",
        group="local",
        queries=_texts("q0", "q1"),
        candidates=_texts("a", "b", "c", "d", "e"),
        candidate_lists=None,
        positives=_arrays([1, 0], [0]),
        ks=(1, 2, 5),
        primary_k=2,
        metric="recall",
    )
    score = score_task(task, queries, candidates)
    assert score.values == {"recall@1": 50.0, "recall@2": 50.0, "recall@5": 100.0}
    assert score.primary == "recall@2"
    # Random top-2 of 5: q0 (2 positives) 1 - C(3,2)/C(5,2) = 0.7; q1: 1 - C(4,2)/C(5,2) = 0.4.
    assert chance_rate(task, 2) == pytest.approx(55.0)


def test_task_rejects_empty_lists_and_stray_positives() -> None:
    common = dict(
        benchmark="toy",
        meta_task="vqa",
        group="ind",
        queries=_texts("q"),
        candidates=_texts("a", "b"),
    )
    with pytest.raises(ValueError, match="toy/Empty: query 0 has an empty candidate list"):
        RankingTask(
            name="Empty",
            candidate_lists=(np.array([], dtype=np.int64),),
            positives=_arrays([0]),
            **common,
        )
    with pytest.raises(ValueError, match="toy/None: query 0 has no positive"):
        RankingTask(
            name="None",
            candidate_lists=_arrays([0, 1]),
            positives=(np.array([], dtype=np.int64),),
            **common,
        )
    with pytest.raises(ValueError, match="toy/Out: query 0 has a positive outside"):
        RankingTask(name="Out", candidate_lists=_arrays([1]), positives=_arrays([0]), **common)
    with pytest.raises(ValueError, match="toy/Pool: query 0 has a positive outside"):
        RankingTask(name="Pool", candidate_lists=None, positives=_arrays([2]), **common)


def test_items_need_text_or_an_image() -> None:
    with pytest.raises(ValueError, match="needs text, an image or both"):
        EvalItem()
    with pytest.raises(ValueError, match="crop box needs an image"):
        EvalItem(text="x", box=(0, 0, 1, 1))
