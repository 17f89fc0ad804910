"""CoMa, compressing then matching (METHODS.md §4).

Stage 1 (``coma_compress``): per record, the image with the "summarize" instruction and n
compression tokens, then ``turns`` of the record's question/answer turns in a random order
(:func:`muco.training.objectives.coma_text.coma_dialogue`); next-token loss on everything after
the compression tokens, under :func:`muco.training.attention.coma_attention` (the text sees the
image only through the compression tokens when ``block_image``).

Stage 2 (``coma_contrastive``): query and target each in the compression prompt, embedding =
the L2-normalised mean of the n compression tokens' last hidden states; InfoNCE (τ = 0.03) over
the gathered batch with the same-image mask, i.e. :func:`muco.training.losses.muco_loss` with
one pair per sequence.

The compression tokens ``<|comp_0|>`` ... are added to the tokenizer before training (their rows
train under LoRA like ``<|emb|>``) and ship with the exported checkpoint. Inference with a
CoMa-trained model must use the compression prompt and mean pooling (``coma_prompt`` with
:func:`muco.model.pooling.mean_pool`), not the single-turn ``<|emb|>`` readout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from muco.config import CoMaCompressStage, CoMaContrastiveStage, StagePlan, TrainConfig
from muco.model.special_tokens import IMAGE_PAD, compression_tokens
from muco.records import read_records
from muco.training.attention import COMA_TEXT, coma_attention, coma_segments
from muco.training.distributed import gather_with_grad
from muco.training.losses import muco_loss
from muco.training.objectives.base import (
    ContrastiveChunk,
    Prompt,
    TokenChunk,
    TokenObjective,
    encode_prompts,
)
from muco.training.objectives.coma_text import coma_dialogue, coma_prompt
from muco.training.objectives.muco import PairObjective, PairSample
from muco.training.pairs import Pair, PairSource


class CoMaCompressObjective(TokenObjective):
    """CoMa stage 1 over M3T records (module docstring)."""

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
        stage = plan.config
        assert isinstance(stage, CoMaCompressStage)
        self.stage = stage
        self.processor = processor
        self.table = read_records(records)
        self.image_root = Path(image_root)
        tokenizer = processor.tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.comp_ids = tokenizer.convert_tokens_to_ids(
            compression_tokens(stage.compression_tokens)
        )

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> Prompt:
        record = self.table.slice(index, 1).to_pylist()[0]
        rng = self.rng(index, stream=4)
        available = len(record["pos_text"])
        order = rng.permutation(available)[: min(self.cfg.turns, available)]
        turns = [
            (record["qry"][i][int(rng.integers(len(record["qry"][i])))], record["pos_text"][i])
            for i in order.tolist()
        ]
        image = record["qry_image_path"]
        path = self.image_root / image if image else None
        text = coma_dialogue("", path is not None, self.stage.compression_tokens, turns)
        image_id = record.get("image_sha256") or f"path:{image}"
        return Prompt(text, path, image_id)

    def collate(self, samples: Sequence[Prompt]) -> TokenChunk:
        # ZeRO-3's keep-alive row, if any, has no compression token: all prefix, no labels.
        batch = encode_prompts(self.processor, samples, always_run_vision=self.zero3)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        segments = coma_segments(ids, mask, self.image_id, self.comp_ids)
        batch["labels"] = torch.where(segments == COMA_TEXT, ids, -100)
        batch["attention_4d"] = coma_attention(
            ids, mask, self.image_id, self.comp_ids, self.stage.block_image
        )
        predicted = int((batch["labels"][:, 1:] != -100).sum())
        return TokenChunk(batch=batch, predicted=predicted, pairs=len(samples))


class CoMaContrastiveObjective(PairObjective):
    """CoMa stage 2 (module docstring)."""

    heads: ClassVar[dict[str, str]] = {"query": "mean", "target": "mean"}

    def __init__(
        self, plan: StagePlan, cfg: TrainConfig, zero3: bool, processor: Any, pairs: PairSource
    ) -> None:
        super().__init__(plan, cfg, zero3, processor, pairs)
        stage = plan.config
        assert isinstance(stage, CoMaContrastiveStage)
        self.stage = stage
        self.comp_ids = torch.tensor(
            processor.tokenizer.convert_tokens_to_ids(compression_tokens(stage.compression_tokens))
        )

    def make(self, pair: Pair, index: int) -> PairSample:
        n = self.stage.compression_tokens
        return PairSample(
            query=Prompt(
                coma_prompt(pair.query, pair.query_image is not None, n),
                pair.query_image,
                pair.image_id,
            ),
            target=Prompt(
                coma_prompt(pair.positive, pair.positive_image is not None, n),
                pair.positive_image,
                pair.image_id,
            ),
            negative=None,
            image_id=pair.image_id,
            positive_text=pair.positive,
        )

    def collate(self, samples: Sequence[PairSample]) -> ContrastiveChunk:
        chunk = super().collate(samples)
        for side in chunk.sides.values():
            side["pool_positions"] = (
                torch.isin(side["input_ids"], self.comp_ids) & side["attention_mask"].bool()
            )
        return chunk

    def loss(self, chunks: Sequence[ContrastiveChunk]) -> Callable[..., Tensor]:
        mask = self.base_mask(chunks)
        ids = list(range(mask.shape[0]))  # the same-image part is already in ``mask``
        temperature = self.stage.temperature

        def loss(query: Tensor, target: Tensor) -> Tensor:
            query, target = gather_with_grad(query), gather_with_grad(target)
            codes = torch.tensor(ids, device=query.device)
            return muco_loss(
                query, target, codes, codes, temperature, extra_mask=mask.to(query.device)
            )

        return loss
