"""MuCo (METHODS.md §1): stage 1 (multi-turn, and its single-turn baseline) and stage 2.

Stage 1 is exactly the loop's original computation: records packed by
:class:`muco.training.packing.PackedDataset`, collated by :class:`muco.training.collate.Collator`,
InfoNCE over the gathered batch with the same-image (and duplicate-text) mask, through
:func:`muco.training.feature_cache.cached_backward_sides`. With the stage's ``hard_negatives``
each turn's ``neg_text`` is encoded as a third, text-only side and joins every query's softmax.

Stage 2 (guided in-context reconstruction) encodes three sides per pair: the query and the
target in the two-``<|emb|>`` template of :mod:`muco.training.reconstruction` (each partner a
masked copy of the other side, images as their descriptions) and the hard negative in the
single-turn template; the loss is :func:`muco.training.losses.muco_stage2_loss` over the
gathered batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from muco.config import MucoReconstructionStage, MucoStage, StagePlan, TrainConfig
from muco.model import templates
from muco.training.collate import CollatedBatch, Collator, count_tokens
from muco.training.distributed import gather_with_grad
from muco.training.feature_cache import cached_backward_sides
from muco.training.losses import (
    duplicate_text_mask,
    muco_loss,
    muco_stage2_loss,
    same_image_mask,
)
from muco.training.objectives.base import (
    ContrastiveChunk,
    ContrastiveObjective,
    Objective,
    Prompt,
    encode_prompts,
    engine_backward,
    gather_strings,
    text_match_mask,
)
from muco.training.packing import PackedDataset, PackedSample
from muco.training.pairs import Pair, PairSource
from muco.training.reconstruction import describe_image, mask_partner, stage2_sequence


class MucoObjective(Objective):
    """MuCo stage 1 (``muco``) and the single-turn baseline (``single_turn``)."""

    def __init__(
        self,
        plan: StagePlan,
        cfg: TrainConfig,
        zero3: bool,
        processor: Any,
        records: Path,
        image_root: Path,
    ) -> None:
        super().__init__(plan, cfg, zero3)
        mode = "single_turn" if plan.method == "single_turn" else "multi_turn"
        self.hard_negatives = plan.config.hard_negatives
        self.dataset = PackedDataset(
            records,
            image_root,
            mode=mode,
            turns=cfg.turns,
            seed=cfg.seed,
            negatives=self.hard_negatives,
        )
        isolate = isinstance(plan.config, MucoStage) and plan.config.target_turns == "isolated"
        self.collator = Collator(processor, always_run_vision=zero3, isolate_target_turns=isolate)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> PackedSample:
        return self.dataset[index]

    def collate(self, samples: Sequence[PackedSample]) -> CollatedBatch:
        return self.collator(samples)

    def step(self, engine: Any, chunks: Sequence[CollatedBatch]) -> Tensor:
        encoders = [lambda chunk: engine(**chunk.query), lambda chunk: engine(**chunk.target)]
        if self.hard_negatives:
            encoders.append(lambda chunk: engine(**chunk.negative))
        return cached_backward_sides(
            encoders,
            [chunks] * len(encoders),
            self.loss(chunks),
            backward=engine_backward(engine, calls=len(encoders) * len(chunks)),
        )

    def loss(self, chunks: Sequence[CollatedBatch]) -> Callable[..., Tensor]:
        cfg = self.cfg
        query_ids = gather_strings([i for c in chunks for i in c.query_image_ids])
        target_ids = gather_strings([i for c in chunks for i in c.target_image_ids])
        texts = gather_strings([t for c in chunks for t in c.target_texts])
        negative_texts = (
            gather_strings([t for c in chunks for t in c.negative_texts])
            if self.hard_negatives
            else []
        )

        def loss(query: Tensor, target: Tensor, negative: Tensor | None = None) -> Tensor:
            query, target = gather_with_grad(query), gather_with_grad(target)
            extra = negative_mask = None
            if cfg.mask_duplicate_targets:
                extra = duplicate_text_mask(texts, torch.arange(len(texts)))
            if negative is not None:
                negative = gather_with_grad(negative)
                if cfg.mask_duplicate_targets:
                    # Another record's negative that reads like this query's positive is not
                    # a negative for it, as with duplicate targets.
                    negative_mask = text_match_mask(texts, negative_texts)
            return muco_loss(
                query,
                target,
                query_ids,
                target_ids,
                cfg.temperature,
                cfg.symmetric,
                extra,
                hard_negatives=negative,
                negative_mask=negative_mask,
            )

        return loss

    @staticmethod
    def tokens(chunk: CollatedBatch) -> int:
        return count_tokens(chunk)


@dataclass(frozen=True)
class PairSample:
    """A pair as prompts: ``query`` / ``target`` / optional ``negative``, and the raw texts the
    masks compare. ``teacher`` holds UniME's teacher vectors of (anchor, positive)."""

    query: Prompt
    target: Prompt
    negative: Prompt | None
    image_id: str
    positive_text: str
    negative_text: str | None = None
    teacher: tuple[Any, Any] | None = None


class PairObjective(ContrastiveObjective):
    """A contrastive objective over a :class:`muco.training.pairs.PairSource`; subclasses turn
    a pair into a :class:`PairSample` (``make``) and define ``loss``."""

    def __init__(
        self, plan: StagePlan, cfg: TrainConfig, zero3: bool, processor: Any, pairs: PairSource
    ) -> None:
        super().__init__(plan, cfg, zero3)
        self.processor = processor
        self.pairs_source = pairs

    def __len__(self) -> int:
        return len(self.pairs_source)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.pairs_source.set_epoch(epoch)

    def __getitem__(self, index: int) -> PairSample:
        return self.make(self.pairs_source[index], index)

    def make(self, pair: Pair, index: int) -> PairSample:
        raise NotImplementedError

    def collate(self, samples: Sequence[PairSample]) -> ContrastiveChunk:
        sides = {
            "query": encode_prompts(self.processor, [s.query for s in samples], self.zero3),
            "target": encode_prompts(self.processor, [s.target for s in samples], self.zero3),
        }
        negatives = [s for s in samples if s.negative is not None]
        if "negative" in self.heads:
            sides["negative"] = encode_prompts(
                self.processor, [s.negative for s in negatives], self.zero3
            )
        chunk = ContrastiveChunk(
            sides=sides,
            image_ids=[s.image_id for s in samples],
            positive_texts=[s.positive_text for s in samples],
            negative_texts=[s.negative_text or "" for s in negatives],
            pairs=len(samples),
        )
        if samples and samples[0].teacher is not None:
            chunk.teacher = {
                "query": torch.as_tensor(_stack([s.teacher[0] for s in samples])),
                "target": torch.as_tensor(_stack([s.teacher[1] for s in samples])),
            }
        return chunk

    def base_mask(self, chunks: Sequence[ContrastiveChunk]) -> Tensor:
        """``(N, N)``: targets of the query's own image, and (if configured) targets whose text
        equals the positive's, over the gathered batch; never the positive itself."""
        ids = gather_strings([i for c in chunks for i in c.image_ids])
        positives = torch.arange(len(ids))
        mask = same_image_mask(ids, ids, positives)
        if self.cfg.mask_duplicate_targets:
            texts = gather_strings([t for c in chunks for t in c.positive_texts])
            mask |= duplicate_text_mask(texts, positives)
        return mask


def _stack(rows: Sequence[Any]) -> np.ndarray:
    return np.stack(rows).astype(np.float32)


class MucoReconstructionObjective(PairObjective):
    """MuCo stage 2 (module docstring)."""

    heads: ClassVar[dict[str, str]] = {"query": "emb", "target": "emb", "negative": "emb"}

    def __init__(
        self, plan: StagePlan, cfg: TrainConfig, zero3: bool, processor: Any, pairs: PairSource
    ) -> None:
        super().__init__(plan, cfg, zero3, processor, pairs)
        stage = plan.config
        assert isinstance(stage, MucoReconstructionStage)
        self.stage = stage
        self.temperature = stage.temperature or cfg.temperature

    def make(self, pair: Pair, index: int) -> PairSample:
        rng = self.rng(index, stream=3)
        query_has_image = pair.query_image is not None
        positive_has_image = pair.positive_image is not None
        # Query side: partner = masked positive; target side: partner = masked query.
        query_partner = self._mask(
            describe_image(pair.positive, pair.positive_description, positive_has_image), rng
        )
        target_partner = self._mask(
            describe_image(pair.query, pair.query_description, query_has_image), rng
        )
        negative = None
        if pair.has_negative:
            negative = Prompt(
                templates.single_turn(pair.negative or "", pair.negative_image is not None),
                pair.negative_image,
                f"negative:{pair.image_id}",
            )
        return PairSample(
            query=Prompt(
                stage2_sequence(pair.query, query_partner, query_has_image),
                pair.query_image,
                pair.image_id,
            ),
            target=Prompt(
                stage2_sequence(pair.positive, target_partner, positive_has_image),
                pair.positive_image,
                pair.image_id,
            ),
            negative=negative,
            image_id=pair.image_id,
            positive_text=pair.positive,
            negative_text=pair.negative,
        )

    def _mask(self, text: str, rng: Any) -> str:
        return mask_partner(
            text, rng, self.stage.whole_mask_probability, self.stage.word_mask_probability
        )

    def loss(self, chunks: Sequence[ContrastiveChunk]) -> Callable[..., Tensor]:
        mask = self.base_mask(chunks)
        if self.cfg.mask_duplicate_targets:
            positives = gather_strings([t for c in chunks for t in c.positive_texts])
            negatives = gather_strings([t for c in chunks for t in c.negative_texts])
            right = text_match_mask(positives, negatives)
        else:
            count = len(gather_strings([t for c in chunks for t in c.negative_texts]))
            right = torch.zeros(mask.shape[0], count, dtype=torch.bool)
        mask = torch.cat([mask, right], dim=1)
        temperature = self.temperature

        def loss(query: Tensor, target: Tensor, negative: Tensor) -> Tensor:
            query, target = gather_with_grad(query), gather_with_grad(target)
            negative = gather_with_grad(negative)
            # Each sequence yields (e, e_aux) in order: rows alternate.
            return muco_stage2_loss(
                query[0::2],
                query[1::2],
                target[0::2],
                target[1::2],
                negative,
                temperature,
                mask.to(query.device),
            )

        return loss
