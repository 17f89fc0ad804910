"""The common form of every benchmark dataset: queries ranked against candidates.

MMEB ranks each query against its own list of candidates; M-BEIR ranks each query against a
task-local pool shared by all queries; scenes-bench follows MMEB. :class:`RankingTask` covers
both: ``candidate_lists`` holds per-query indices into ``candidates``, or is ``None`` when every
query is ranked against the whole pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EvalItem:
    """One input to embed: instruction/query text, an image file, or both.

    ``box`` is an optional pixel crop ``(left, top, right, bottom)`` of ``image``
    (right/bottom exclusive), used for grounding candidates, so crops need no files of their
    own. Two items are the same input when text, image content and box are equal; the encoder
    hashes the image's bytes, not its path.
    """

    text: str = ""
    image: str | None = None
    box: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if not self.text and self.image is None:
            raise ValueError("an item needs text, an image or both")
        if self.box is not None and self.image is None:
            raise ValueError("a crop box needs an image")


@dataclass(frozen=True, eq=False)
class RankingTask:
    """One dataset of one benchmark, ready to score.

    - ``queries``: Q items;
    - ``candidates``: C distinct candidate items (a dataset's whole pool);
    - ``candidate_lists``: per query, an int array of indices into ``candidates`` to rank
      against (MMEB: each query's own list), or ``None`` to rank against all C (M-BEIR);
    - ``positives``: per query, an int array of indices into ``candidates`` that are correct
      (at least one, and within the query's list);
    - ``ks``: the cut-offs reported; ``primary_k`` is the headline one; ``metric`` names them
      (``hit`` for MMEB's hit@k, ``recall`` for M-BEIR's Recall@k; both count a query as
      correct when a positive is in the top k);
    - ``meta_task`` and ``group``: how the dataset is averaged (MMEB's meta-task and IND/OOD,
      scenes-bench's seen/unseen split, M-BEIR's task);
    - ``extra``: reader-specific descriptive strings kept with the results (e.g. M-BEIR's
      modalities).
    """

    benchmark: str
    name: str
    meta_task: str
    group: str
    queries: tuple[EvalItem, ...]
    candidates: tuple[EvalItem, ...]
    candidate_lists: tuple[np.ndarray, ...] | None
    positives: tuple[np.ndarray, ...]
    ks: tuple[int, ...] = (1,)
    primary_k: int = 1
    metric: str = "hit"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"{self.benchmark}/{self.name}"
        if not self.queries:
            raise ValueError(f"{where}: no queries")
        if len(self.positives) != len(self.queries):
            raise ValueError(
                f"{where}: {len(self.positives)} positive sets for {len(self.queries)} queries"
            )
        if self.candidate_lists is not None and len(self.candidate_lists) != len(self.queries):
            raise ValueError(
                f"{where}: {len(self.candidate_lists)} candidate lists for "
                f"{len(self.queries)} queries"
            )
        if self.primary_k not in self.ks:
            raise ValueError(f"{where}: primary_k {self.primary_k} is not among ks {self.ks}")
        for index in range(len(self.queries)):
            self._check_query(index, where)

    def _check_query(self, index: int, where: str) -> None:
        positives = self.positives[index]
        if self.list_size(index) == 0:
            raise ValueError(f"{where}: query {index} has an empty candidate list")
        if positives.size == 0:
            raise ValueError(f"{where}: query {index} has no positive candidate")
        if self.candidate_lists is None:
            # A bounds check: a pool of millions (M-BEIR's union) makes isin per query costly.
            inside = positives.min() >= 0 and positives.max() < len(self.candidates)
        else:
            inside = np.isin(positives, self.candidate_lists[index]).all()
        if not inside:
            raise ValueError(f"{where}: query {index} has a positive outside its candidates")

    def list_size(self, query: int) -> int:
        """How many candidates query ``query`` is ranked against."""
        if self.candidate_lists is None:
            return len(self.candidates)
        return int(self.candidate_lists[query].size)

    def ranked_indices(self, query: int) -> np.ndarray:
        """Indices into ``candidates`` that query ``query`` is ranked against."""
        if self.candidate_lists is None:
            return np.arange(len(self.candidates))
        return self.candidate_lists[query]

    def items(self) -> list[EvalItem]:
        """Every item the task needs embedded: queries, then candidates."""
        return [*self.queries, *self.candidates]


def index_items(items: Sequence[EvalItem]) -> tuple[tuple[EvalItem, ...], dict[EvalItem, int]]:
    """Distinct ``items`` in first-seen order, and each one's index among them.

    Readers use it to turn candidate lists (which repeat labels and images across queries)
    into one pool plus integer lists.
    """
    index: dict[EvalItem, int] = {}
    for item in items:
        index.setdefault(item, len(index))
    return tuple(index), index
