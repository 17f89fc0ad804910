"""Ranking metrics: hit@k (MMEB's precision@1 at k = 1) and Recall@k as hit-in-top-k (M-BEIR).

Scores are dot products of L2-normalised embeddings. A query's rank is 1 + the number of
*negative* candidates scoring at least as high as its best positive: ties are broken against
the positive. MMEB lists the positive first, so an evaluator that breaks ties by position (as
``argmax`` does) scores a collapsed model, whose embeddings are all equal, at 100%; here it
scores 0, and a random ranking scores :func:`chance_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from muco.evaluation.tasks import RankingTask

# Scores held at once when ranking against a shared pool: 2^26 float32 = 256 MiB, whatever
# the pool's size (M-BEIR's union pool has millions of candidates).
_SCORE_BLOCK = 1 << 26


@dataclass(frozen=True)
class DatasetScore:
    """The scores of one dataset: ``values`` maps ``"hit@1"``-style names to percentages."""

    benchmark: str
    dataset: str
    meta_task: str
    group: str
    values: dict[str, float]
    primary: str
    queries: int
    chance: float

    @property
    def score(self) -> float:
        """The headline metric, in percent."""
        return self.values[self.primary]


def rank_of_best_positive(scores: np.ndarray, positives: np.ndarray) -> int:
    """1-based rank of the best positive among ``scores`` (C,); ties count against it.

    ``positives`` holds indices into ``scores``. Other positives never push it down.
    """
    if scores.size == 0:
        raise ValueError("empty candidate list")
    if positives.size == 0:
        raise ValueError("no positive candidate")
    best = scores[positives].max()
    negative = np.ones(scores.shape[0], dtype=bool)
    negative[positives] = False
    return 1 + int(np.count_nonzero(scores[negative] >= best))


def task_ranks(
    task: RankingTask, query_embeddings: np.ndarray, candidate_embeddings: np.ndarray
) -> np.ndarray:
    """Rank (Q,) of every query's best positive; embeddings are (Q, D) and (C, D)."""
    if query_embeddings.shape[0] != len(task.queries):
        raise ValueError(f"{task.name}: {query_embeddings.shape[0]} query embeddings")
    if candidate_embeddings.shape[0] != len(task.candidates):
        raise ValueError(f"{task.name}: {candidate_embeddings.shape[0]} candidate embeddings")
    ranks = np.empty(len(task.queries), dtype=np.int64)
    if task.candidate_lists is None:
        chunk = max(1, _SCORE_BLOCK // max(1, len(task.candidates)))
        for start in range(0, len(task.queries), chunk):
            block = query_embeddings[start : start + chunk] @ candidate_embeddings.T
            for offset, scores in enumerate(block):
                ranks[start + offset] = rank_of_best_positive(
                    scores, task.positives[start + offset]
                )
        return ranks
    for index, listed in enumerate(task.candidate_lists):
        scores = candidate_embeddings[listed] @ query_embeddings[index]
        # Positives are candidate indices; their positions in this query's list are needed.
        positions = np.flatnonzero(np.isin(listed, task.positives[index]))
        ranks[index] = rank_of_best_positive(scores, positions)
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Percentage of queries whose best positive ranks within the top ``k``."""
    if ranks.size == 0:
        raise ValueError("no ranks to score")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    return 100.0 * float(np.mean(ranks <= k))


def chance_rate(task: RankingTask, k: int) -> float:
    """Expected hit@k in percent of a uniformly random ranking of each query's candidates.

    For n candidates of which p are positive: 1 - C(n - p, k) / C(n, k).
    """
    total = 0.0
    for index in range(len(task.queries)):
        n = task.list_size(index)
        p = task.positives[index].size
        total += 1.0 - comb(n - p, k) / comb(n, k) if k < n else 1.0
    return 100.0 * total / len(task.queries)


def score_task(
    task: RankingTask, query_embeddings: np.ndarray, candidate_embeddings: np.ndarray
) -> DatasetScore:
    """Every cut-off of ``task`` in percent, with its chance level."""
    ranks = task_ranks(task, query_embeddings, candidate_embeddings)
    values = {f"{task.metric}@{k}": hit_rate(ranks, k) for k in task.ks}
    return DatasetScore(
        benchmark=task.benchmark,
        dataset=task.name,
        meta_task=task.meta_task,
        group=task.group,
        values=values,
        primary=f"{task.metric}@{task.primary_k}",
        queries=len(task.queries),
        chance=chance_rate(task, task.primary_k),
    )
