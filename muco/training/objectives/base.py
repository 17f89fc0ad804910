"""What every objective provides to the loop, and the pieces they share.

An :class:`Objective` is an indexable set of training items (records or pairs, reproducible
from ``(seed, epoch, index)``), a ``collate`` that turns a micro-batch of items into model
inputs, and a ``step`` that accumulates one optimizer step's gradients into the engine from the
micro-batches of this rank. Contrastive objectives encode every side of the whole batch with
feature caching (:func:`muco.training.feature_cache.cached_backward_sides`), so the loss sees
the global batch gathered across ranks with gradient; next-token objectives (CoMa and CoCoA
stage 1) backpropagate each micro-batch on its own, weighted by its share of the step's
predicted tokens. Every forward goes through ``engine(head=..., **inputs)``
(``muco.training.loop.EmbeddingModule``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from transformers import BatchFeature

from muco.config import StagePlan, TrainConfig
from muco.model.special_tokens import IM_END, IM_START
from muco.training.collate import process_texts
from muco.training.feature_cache import cached_backward_sides
from muco.training.losses import _normalise_text

# A row with no <|emb|> and no image: what a side encodes when this rank's micro-batch has
# nothing for it, so that every rank still runs the same number of forward passes.
EMPTY_ROW = f"{IM_START}user\n{IM_END}"


def gather_strings(values: Sequence[str]) -> list[str]:
    """``values`` of every rank, concatenated in rank order (identity without a group)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return list(values)
    gathered: list[list[str] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, list(values))
    return [value for part in gathered for value in (part or [])]


def engine_backward(engine: Any, calls: int) -> Callable[[Tensor], None]:
    """Backward through DeepSpeed for each of ``calls`` surrogates; only the last one is the
    accumulation boundary.

    The surrogates already carry the exact gradient of the whole step's loss, so DeepSpeed
    must not divide them by its accumulation count (``scale_wrt_gas=False``).
    """
    done = 0

    def backward(surrogate: Tensor) -> None:
        nonlocal done
        done += 1
        engine.set_gradient_accumulation_boundary(done == calls)
        engine.backward(surrogate, scale_wrt_gas=False)

    return backward


@dataclass(frozen=True)
class Prompt:
    """One sequence to encode: its full text and its image (a path or None)."""

    text: str
    image: Path | None
    image_id: str


def encode_prompts(
    processor: Any, prompts: Sequence[Prompt], always_run_vision: bool
) -> BatchFeature:
    """The processor's batch of ``prompts`` (:func:`muco.training.collate.process_texts`)."""
    if not prompts:
        return process_texts(
            processor, [EMPTY_ROW], [(None, "")], always_run_vision=always_run_vision
        )
    return process_texts(
        processor,
        [p.text for p in prompts],
        [(p.image, p.image_id) for p in prompts],
        always_run_vision=always_run_vision,
    )


def text_match_mask(row_texts: Sequence[str], column_texts: Sequence[str]) -> Tensor:
    """``(R, C)`` bool, True where the texts are equal after lowercasing and collapsing
    whitespace (the comparison of :func:`muco.training.losses.duplicate_text_mask`)."""
    vocabulary: dict[str, int] = {}
    rows = [vocabulary.setdefault(_normalise_text(t), len(vocabulary)) for t in row_texts]
    columns = [vocabulary.setdefault(_normalise_text(t), len(vocabulary)) for t in column_texts]
    return torch.tensor(rows)[:, None] == torch.tensor(columns, dtype=torch.long)[None, :]


@dataclass
class ContrastiveChunk:
    """A micro-batch of a contrastive objective: one processor batch per side, plus what the
    loss needs per embedding row (image ids, raw texts, teacher vectors)."""

    sides: dict[str, BatchFeature]
    image_ids: list[str]
    positive_texts: list[str]
    negative_texts: list[str] = field(default_factory=list)
    teacher: dict[str, Tensor] = field(default_factory=dict)
    pairs: int = 0

    def tokens(self) -> int:
        return int(sum(batch["attention_mask"].sum() for batch in self.sides.values()))


@dataclass
class TokenChunk:
    """A micro-batch of a next-token objective: inputs with ``labels`` and ``attention_4d``."""

    batch: BatchFeature
    predicted: int
    pairs: int

    def tokens(self) -> int:
        return int(self.batch["attention_mask"].sum())


class Objective:
    """One stage's method (module docstring). Subclasses set the data and the three hooks."""

    def __init__(self, plan: StagePlan, cfg: TrainConfig, zero3: bool) -> None:
        self.plan = plan
        self.cfg = cfg
        self.zero3 = zero3
        self.epoch = 0

    # -- data
    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def rng(self, index: int, stream: int) -> np.random.Generator:
        """A generator for item ``index`` in this epoch; ``stream`` keeps uses apart."""
        return np.random.default_rng([self.cfg.seed, self.epoch, index, stream])

    # -- batches
    def collate(self, samples: Sequence[Any]) -> Any:
        raise NotImplementedError

    def step(self, engine: Any, chunks: Sequence[Any]) -> Tensor:
        """Accumulate this rank's gradients of the step's loss; return the loss, detached."""
        raise NotImplementedError

    @staticmethod
    def pairs(chunk: Any) -> int:
        return chunk.pairs

    @staticmethod
    def tokens(chunk: Any) -> int:
        return chunk.tokens()


class ContrastiveObjective(Objective):
    """Sides encoded with feature caching, the loss over the gathered global batch.

    Subclasses set :attr:`heads` (side name → ``"emb"`` / ``"mean"``) and implement ``loss``
    taking one ``(N_side, D)`` tensor per side, in :attr:`heads` order, and the chunks.
    """

    heads: ClassVar[dict[str, str]] = {"query": "emb", "target": "emb"}

    def loss(self, chunks: Sequence[ContrastiveChunk]) -> Callable[..., Tensor]:
        raise NotImplementedError

    def step(self, engine: Any, chunks: Sequence[ContrastiveChunk]) -> Tensor:
        names = list(self.heads)

        def encoder(name: str) -> Callable[[ContrastiveChunk], Tensor]:
            head = self.heads[name]
            return lambda chunk: engine(head=head, **chunk.sides[name])

        return cached_backward_sides(
            [encoder(name) for name in names],
            [chunks] * len(names),
            self.loss(chunks),
            backward=engine_backward(engine, calls=len(names) * len(chunks)),
        )


class TokenObjective(Objective):
    """Next-token loss: the step's loss is the mean NLL over every predicted token of this
    rank's micro-batches (each backpropagated on its own, weighted by its token share)."""

    def step(self, engine: Any, chunks: Sequence[TokenChunk]) -> Tensor:
        total = max(1, sum(chunk.predicted for chunk in chunks))
        backward = engine_backward(engine, calls=len(chunks))
        summed = 0.0
        for chunk in chunks:
            nll = engine(head="nll", **chunk.batch)
            backward(nll / total)
            summed += float(nll.detach())
        return torch.tensor(summed / total)
