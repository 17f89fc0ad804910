"""UniME (METHODS.md §3): textual knowledge distillation, then hard-negative instruction tuning.

Stage 1 (``unime_distill``) trains on the *text-only* form of the pairs: an image in a text is
replaced by its generated description (``Image description: ...``, as MuCo stage 2 does it) or
dropped when there is none, so no image reaches the model and only the language part learns.
The student embeds anchor and positive with the single-turn template; the teacher's vectors of
the same texts come from :mod:`muco.training.teacher`, computed once before the stage's first
step (rank 0 embeds what the cache lacks, the others wait) and looked up per item.

Stage 2 (``unime_hard_negative``) is single-turn pairs with
:func:`muco.training.losses.hard_negative_loss` over the gathered batch; candidates of the
query's own image (and, if configured, with the positive's text) are never negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from muco.config import StagePlan, TrainConfig, UniMEDistillStage, UniMEHardNegativeStage
from muco.model import templates
from muco.training.distributed import gather_with_grad
from muco.training.losses import distillation_loss, hard_negative_loss
from muco.training.objectives.base import ContrastiveChunk, Prompt
from muco.training.objectives.muco import PairObjective, PairSample
from muco.training.pairs import Pair, PairSource
from muco.training.reconstruction import describe_image
from muco.training.teacher import SentenceTeacher, TeacherCache, cache_root, precompute


def text_only(pair: Pair) -> tuple[str, str]:
    """(anchor, positive) of a pair with images as their descriptions (module docstring)."""
    anchor = describe_image(pair.query, pair.query_description, pair.query_image is not None)
    positive = describe_image(
        pair.positive, pair.positive_description, pair.positive_image is not None
    )
    return anchor, positive


class UniMEDistillObjective(PairObjective):
    """UniME stage 1 (module docstring)."""

    def __init__(
        self,
        plan: StagePlan,
        cfg: TrainConfig,
        zero3: bool,
        processor: Any,
        pairs: PairSource,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(plan, cfg, zero3, processor, pairs)
        stage = plan.config
        assert isinstance(stage, UniMEDistillStage)
        self.stage = stage
        self.cache = TeacherCache(self._prepare_teacher(cache_dir or cache_root()))

    def _prepare_teacher(self, root: Path) -> Path:
        """Rank 0 fills the cache with every text the stage can draw; all ranks get its path."""
        distributed = torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        directory: list[Path | None] = [None]
        if rank == 0:
            texts = [
                text
                for index in range(len(self.pairs_source))
                for variant in self.pairs_source.variants(index)
                for text in text_only(variant)
            ]
            teacher = SentenceTeacher(self.stage.teacher, self.stage.teacher_batch_size)
            directory[0] = precompute(teacher, texts, root)
            del teacher
        if distributed and torch.distributed.get_world_size() > 1:
            torch.distributed.broadcast_object_list(directory, src=0)
        assert directory[0] is not None
        return directory[0]

    def make(self, pair: Pair, index: int) -> PairSample:
        anchor, positive = text_only(pair)
        vectors = self.cache.lookup([anchor, positive])
        return PairSample(
            query=Prompt(templates.single_turn(anchor, False), None, pair.image_id),
            target=Prompt(templates.single_turn(positive, False), None, pair.image_id),
            negative=None,
            image_id=pair.image_id,
            positive_text=positive,
            teacher=(vectors[0], vectors[1]),
        )

    def loss(self, chunks: Sequence[ContrastiveChunk]) -> Callable[..., Tensor]:
        teacher_query = gather_with_grad(torch.cat([c.teacher["query"] for c in chunks]))
        teacher_target = gather_with_grad(torch.cat([c.teacher["target"] for c in chunks]))
        stage = self.stage

        def loss(query: Tensor, target: Tensor) -> Tensor:
            query, target = gather_with_grad(query), gather_with_grad(target)
            return distillation_loss(
                query,
                target,
                teacher_query.to(query.device),
                teacher_target.to(query.device),
                stage.student_temperature,
                stage.teacher_temperature,
            )

        return loss


class UniMEHardNegativeObjective(PairObjective):
    """UniME stage 2 (module docstring)."""

    def __init__(
        self, plan: StagePlan, cfg: TrainConfig, zero3: bool, processor: Any, pairs: PairSource
    ) -> None:
        super().__init__(plan, cfg, zero3, processor, pairs)
        stage = plan.config
        assert isinstance(stage, UniMEHardNegativeStage)
        self.stage = stage

    def make(self, pair: Pair, index: int) -> PairSample:
        return single_turn_pair(pair)

    def loss(self, chunks: Sequence[ContrastiveChunk]) -> Callable[..., Tensor]:
        mask = self.base_mask(chunks)
        stage = self.stage

        def loss(query: Tensor, target: Tensor) -> Tensor:
            query, target = gather_with_grad(query), gather_with_grad(target)
            positives = torch.arange(query.shape[0], device=query.device)
            return hard_negative_loss(
                query,
                target,
                positives,
                stage.temperature,
                stage.margin,
                stage.hard_negatives,
                mask.to(query.device),
            )

        return loss


def single_turn_pair(pair: Pair) -> PairSample:
    """A pair in the single-turn template on both sides (images inline)."""
    return PairSample(
        query=Prompt(
            templates.single_turn(pair.query, pair.query_image is not None),
            pair.query_image,
            pair.image_id,
        ),
        target=Prompt(
            templates.single_turn(pair.positive, pair.positive_image is not None),
            pair.positive_image,
            pair.image_id,
        ),
        negative=None,
        image_id=pair.image_id,
        positive_text=pair.positive,
    )
