"""CoCoA, content reconstruction with collaborative attention (METHODS.md §5, interpretation).

Stage 1 (``cocoa_reconstruct``): every pair gives two sequences, its query and its positive, each
as ``[input][EOS][reconstruction]`` (:func:`muco.training.objectives.cocoa_text.cocoa_sequence`,
EOS = ``<|emb|>``) under :func:`muco.training.attention.cocoa_attention`; next-token loss on the
reconstruction, which sees only EOS and itself, so the input's text must pass through EOS.

Stage 2 (``cocoa_contrastive``): InfoNCE on EOS with the single-turn template, i.e. the
embedding ``Embedder`` reads at inference, under plain causal attention as at inference (the
bidirectional input of stage 1 is a training device here: evaluation is unchanged and causal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from muco.config import CoCoAContrastiveStage, CoCoAReconstructStage, StagePlan, TrainConfig
from muco.model.special_tokens import EMB_TOKEN
from muco.training.attention import COCOA_RECON, cocoa_attention, cocoa_segments
from muco.training.distributed import gather_with_grad
from muco.training.losses import muco_loss
from muco.training.objectives.base import (
    ContrastiveChunk,
    Prompt,
    TokenChunk,
    TokenObjective,
    encode_prompts,
)
from muco.training.objectives.cocoa_text import cocoa_sequence
from muco.training.objectives.muco import PairObjective, PairSample
from muco.training.objectives.unime import single_turn_pair
from muco.training.pairs import Pair, PairSource


class CoCoAReconstructObjective(TokenObjective):
    """CoCoA stage 1 (module docstring)."""

    def __init__(
        self, plan: StagePlan, cfg: TrainConfig, zero3: bool, processor: Any, pairs: PairSource
    ) -> None:
        super().__init__(plan, cfg, zero3)
        stage = plan.config
        assert isinstance(stage, CoCoAReconstructStage)
        self.stage = stage
        self.processor = processor
        self.pairs_source = pairs
        self.eos_id = processor.tokenizer.convert_tokens_to_ids(EMB_TOKEN)

    def __len__(self) -> int:
        return len(self.pairs_source)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.pairs_source.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple[Prompt, Prompt]:
        pair = self.pairs_source[index]
        return (
            Prompt(
                cocoa_sequence(pair.query, pair.query_image is not None),
                pair.query_image,
                pair.image_id,
            ),
            Prompt(
                cocoa_sequence(pair.positive, pair.positive_image is not None),
                pair.positive_image,
                pair.image_id,
            ),
        )

    def collate(self, samples: Sequence[tuple[Prompt, Prompt]]) -> TokenChunk:
        prompts = [prompt for sample in samples for prompt in sample]
        batch = encode_prompts(self.processor, prompts, always_run_vision=self.zero3)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # ZeRO-3's keep-alive row (a blank image, no EOS) is all input and predicts nothing.
        segments = cocoa_segments(ids, mask, self.eos_id, require_eos=not self.zero3)
        batch["labels"] = torch.where(segments == COCOA_RECON, ids, -100)
        batch["attention_4d"] = cocoa_attention(
            ids, mask, self.eos_id, self.stage.bidirectional_input, require_eos=not self.zero3
        )
        predicted = int((batch["labels"][:, 1:] != -100).sum())
        return TokenChunk(batch=batch, predicted=predicted, pairs=len(samples))


class CoCoAContrastiveObjective(PairObjective):
    """CoCoA stage 2 (module docstring)."""

    def __init__(
        self, plan: StagePlan, cfg: TrainConfig, zero3: bool, processor: Any, pairs: PairSource
    ) -> None:
        super().__init__(plan, cfg, zero3, processor, pairs)
        stage = plan.config
        assert isinstance(stage, CoCoAContrastiveStage)
        self.temperature = stage.temperature or cfg.temperature

    def make(self, pair: Pair, index: int) -> PairSample:
        return single_turn_pair(pair)

    def loss(self, chunks: Sequence[ContrastiveChunk]) -> Callable[..., Tensor]:
        mask = self.base_mask(chunks)
        temperature = self.temperature

        def loss(query: Tensor, target: Tensor) -> Tensor:
            query, target = gather_with_grad(query), gather_with_grad(target)
            codes = torch.arange(query.shape[0], device=query.device)
            return muco_loss(
                query, target, codes, codes, temperature, extra_mask=mask.to(query.device)
            )

        return loss
