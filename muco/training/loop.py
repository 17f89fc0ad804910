"""The training loop on the DeepSpeed engine (METHODS.md §1).

One optimizer step per global batch: every rank packs its share of the batch's records, encodes
them in micro-batches with feature caching, and the loss sees every rank's embeddings (gathered
with gradient). Batches are a pure function of (seed, step), and checkpoints carry every RNG
state, so a run resumed from any checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from muco.config import BackboneConfig, TrainConfig
from muco.model.embedder import Embedder
from muco.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from muco.training.collate import CollatedBatch, Collator, count_tokens
from muco.training.distributed import gather_with_grad
from muco.training.engine import deepspeed_config, init_distributed, records_per_rank
from muco.training.feature_cache import cached_backward
from muco.training.finetune import prepare_for_training
from muco.training.losses import duplicate_text_mask, muco_loss
from muco.training.packing import PackedDataset

LogFn = Callable[[dict], None]


@dataclass
class TrainReport:
    """What a run did; ``history`` has one entry per logged step."""

    steps: int = 0
    resumed_from: int = 0
    pairs: int = 0
    tokens: int = 0
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def batch_records(
    num_records: int, global_batch: int, seed: int, step: int
) -> tuple[int, np.ndarray]:
    """The epoch and record indices of global step ``step``: epochs are seeded permutations.

    A pure function of its arguments, which is what makes resuming exact. The last partial
    batch of an epoch is dropped so every step has the same contrastive batch size.
    """
    steps_per_epoch = num_records // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"train.global_batch_size ({global_batch}) exceeds the number of records "
            f"({num_records})"
        )
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_records)
    return epoch, order[position * global_batch : (position + 1) * global_batch]


def learning_rate_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup over ``warmup_steps``, then constant or cosine decay to zero."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class EmbeddingModule(torch.nn.Module):
    """The module DeepSpeed wraps: the backbone, with a forward that returns embeddings.

    Every forward must go through ``engine(...)``: the engine's prologue runs ZeRO bookkeeping
    (stage 3 switches gradient partitions from copy to accumulate there) and bf16 autocast.
    Wrapping the backbone's own forward would also compute LM logits that MuCo never uses.
    """

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.backbone = embedder.backbone.model
        self.embedder = embedder  # not a Module: holds the processor and the <|emb|> id

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        """``(N_emb, D)`` L2-normalised embeddings of a processed batch."""
        return self.embedder.forward_embeddings(batch)


def _gather_strings(values: Sequence[str]) -> list[str]:
    world = torch.distributed.get_world_size()
    if world == 1:
        return list(values)
    gathered: list[list[str] | None] = [None] * world
    torch.distributed.all_gather_object(gathered, list(values))
    return [value for part in gathered for value in (part or [])]


def _loss_fn(cfg: TrainConfig, chunks: Sequence[CollatedBatch]) -> Callable:
    query_ids = _gather_strings([i for c in chunks for i in c.query_image_ids])
    target_ids = _gather_strings([i for c in chunks for i in c.target_image_ids])
    texts = _gather_strings([t for c in chunks for t in c.target_texts])

    def loss(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        query, target = gather_with_grad(query), gather_with_grad(target)
        extra = None
        if cfg.mask_duplicate_targets:
            extra = duplicate_text_mask(texts, torch.arange(len(texts)))
        return muco_loss(
            query, target, query_ids, target_ids, cfg.temperature, cfg.symmetric, extra
        )

    return loss


def train(
    cfg: TrainConfig,
    backbone_cfg: BackboneConfig,
    records: Path,
    image_root: Path,
    backbone_dir: Path,
    checkpoint_dir: Path,
    *,
    log: LogFn | None = None,
    tensorboard_dir: Path | None = None,
    progress: bool = False,
) -> tuple[Embedder, TrainReport]:
    """Train the embedder described by ``cfg``; resumes from ``checkpoint_dir`` if possible.

    Rank 0 logs each logged step to ``log``, to TensorBoard under ``tensorboard_dir`` and to a
    progress bar. Returns the trained embedder (LoRA not yet merged) and the report.
    Collective: every rank calls it.
    """
    import deepspeed

    rank, world = init_distributed()
    per_rank = records_per_rank(cfg, world)
    torch.manual_seed(cfg.seed + rank)  # dropout streams differ per rank, reproducibly
    embedder = Embedder.from_pretrained(
        backbone_dir,
        min_pixels=backbone_cfg.min_pixels,
        max_pixels=backbone_cfg.max_pixels,
        attn_implementation=backbone_cfg.attn_implementation,
    )
    summary = prepare_for_training(embedder, cfg.finetune, cfg.gradient_checkpointing)
    model = embedder.backbone.model
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(cfg))
    engine, _, _, _ = deepspeed.initialize(
        model=EmbeddingModule(embedder),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world),
    )
    mode = "single_turn" if cfg.stages == ("single_turn",) else "multi_turn"
    dataset = PackedDataset(records, image_root, mode=mode, turns=cfg.turns, seed=cfg.seed)
    collator = Collator(
        embedder.backbone.processor, always_run_vision=cfg.deepspeed.zero_stage == 3
    )
    report = TrainReport(trainable_parameters=summary.trainable, total_parameters=summary.total)
    state = load_checkpoint(engine, checkpoint_dir, rank)
    if state is not None:
        restore_rng(state.rng)
        report.resumed_from = state.step
    started = time.perf_counter()
    board = _tensorboard(tensorboard_dir) if rank == 0 else None
    bar = tqdm(
        total=cfg.max_steps,
        initial=report.resumed_from,
        desc="train",
        unit="step",
        disable=rank != 0 or not progress,
    )
    model.train()
    for step in range(report.resumed_from, cfg.max_steps):
        epoch, indices = batch_records(len(dataset), cfg.global_batch_size, cfg.seed, step)
        dataset.set_epoch(epoch)
        mine = indices[rank * per_rank : (rank + 1) * per_rank]
        samples = [dataset[int(i)] for i in mine]
        chunks = [
            collator(samples[start : start + cfg.micro_batch_size])
            for start in range(0, per_rank, cfg.micro_batch_size)
        ]
        loss = cached_backward(
            lambda chunk: engine(**chunk.query),
            lambda chunk: engine(**chunk.target),
            chunks,
            chunks,
            _loss_fn(cfg, chunks),
            backward=_engine_backward(engine, calls=2 * len(chunks)),
        )
        engine.step()
        bar.update()
        bar.set_postfix(loss=f"{float(loss):.4f}")
        report.steps += 1
        report.pairs += sum(c.pairs for c in chunks) * world
        report.tokens += sum(count_tokens(c) for c in chunks) * world
        if (step + 1) % cfg.log_every_steps == 0 or step + 1 == cfg.max_steps:
            elapsed = time.perf_counter() - started
            entry = {
                "step": step + 1,
                "loss": float(loss),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "pairs_per_s": report.pairs / elapsed,
                "tokens_per_s": report.tokens / elapsed,
            }
            report.history.append(entry)
            if log is not None and rank == 0:
                log(entry)
            if board is not None:
                for name, value in entry.items():
                    if name != "step":
                        board.add_scalar(f"train/{name}", value, entry["step"])
        if (step + 1) % cfg.checkpoint.every_steps == 0 or step + 1 == cfg.max_steps:
            save_checkpoint(engine, checkpoint_dir, step + 1, cfg.checkpoint.keep_last, rank)
    report.seconds = time.perf_counter() - started
    bar.close()
    if board is not None:
        board.close()
    model.eval()
    return embedder, report


def _tensorboard(directory: Path | None) -> object | None:
    if directory is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    return SummaryWriter(log_dir=str(directory))


def _engine_backward(engine: object, calls: int) -> Callable[[torch.Tensor], None]:
    """Backward through DeepSpeed for each cached chunk; only the last one is the boundary.

    The chunk surrogates already carry the exact gradient of the whole-batch loss, so DeepSpeed
    must not divide them by its accumulation count (``scale_wrt_gas=False``).
    """
    done = 0

    def backward(surrogate: torch.Tensor) -> None:
        nonlocal done
        done += 1
        engine.set_gradient_accumulation_boundary(done == calls)
        engine.backward(surrogate, scale_wrt_gas=False)

    return backward
