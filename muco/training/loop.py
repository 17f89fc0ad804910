"""The training loop on the DeepSpeed engine (METHODS.md §1, §3-5).

One optimizer step per global batch: every rank builds its share of the batch's items, encodes
them in micro-batches (with feature caching for the contrastive objectives), and the loss sees
every rank's embeddings (gathered with gradient). ``train.stages`` run in order through this one
loop: one engine, one optimizer, one global step count; stage ``i`` owns the global steps
``[start_i, start_i + steps_i)`` and its own objective (:mod:`muco.training.objectives`), batch
size and learning rate. Batches are a pure function of (seed, stage, step), and checkpoints carry
every RNG state, so a run resumed from any checkpoint, in any stage, continues exactly as an
uninterrupted run would.
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

from muco.config import BackboneConfig, StagePlan, TrainConfig
from muco.model.embedder import Embedder, Readout
from muco.model.pooling import mean_pool
from muco.training.attention import isolated_turn_attention
from muco.training.checkpoint import (
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from muco.training.engine import deepspeed_config, init_distributed, records_per_rank
from muco.training.finetune import prepare_for_training
from muco.training.forward import (
    backbone_hidden,
    default_position_ids,
    next_token_nll_sum,
    restart_turn_positions,
    token_embeddings,
)
from muco.training.objectives.base import Objective
from muco.training.objectives.registry import build_objective, stage_tokens
from muco.training.vocab import ensure_tokens

LogFn = Callable[[dict], None]


@dataclass
class TrainReport:
    """What a run did; ``history`` has one entry per logged step, those before a resume
    included (restored from the checkpoint), while ``steps``, ``pairs``, ``tokens`` and
    ``seconds`` count this process's work only."""

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
    """The multiplier of ``cfg.lr`` at each global step, stage by stage.

    Within a stage: linear warmup over its ``warmup_steps``, then constant or cosine decay to
    zero at its end, scaled by the stage's ``lr / cfg.lr``. With one stage that keeps the
    ``train`` values this is exactly the single-schedule factor it always was.
    """
    plans = cfg.plan()

    def factor(step: int) -> float:
        plan = plan_at(plans, step)
        local = step - plan.start
        if local < plan.warmup_steps:
            value = (local + 1) / plan.warmup_steps
        elif cfg.schedule == "constant":
            value = 1.0
        else:
            progress = (local - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
            value = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return value if plan.lr == cfg.lr else value * plan.lr / cfg.lr

    return factor


def plan_at(plans: Sequence[StagePlan], step: int) -> StagePlan:
    """The stage that global step ``step`` belongs to (the last one past the end)."""
    for plan in plans:
        if step < plan.end:
            return plan
    return plans[-1]


class EmbeddingModule(torch.nn.Module):
    """The module DeepSpeed wraps: the backbone, with a forward that returns what a method reads.

    Every forward must go through ``engine(...)``: the engine's prologue runs ZeRO bookkeeping
    (stage 3 switches gradient partitions from copy to accumulate there) and bf16 autocast.
    Wrapping the backbone's own forward would also compute LM logits for every position.

    ``head`` picks the readout: ``"emb"`` (the hidden state at each ``<|emb|>``, MuCo's and
    CoCoA's embedding), ``"mean"`` (per row, the mean over ``pool_positions``: CoMa), ``"nll"``
    (the summed next-token loss of ``labels``: CoMa and CoCoA stage 1). ``attention_4d``, a
    ``(B, L, L)`` bool mask, replaces causal attention (:mod:`muco.training.forward`);
    ``turn_segments`` (B, L) isolates the turns of multi-turn sequences from each other
    (:func:`muco.training.attention.isolated_turn_attention`, positions restarted per turn).
    """

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.backbone = embedder.backbone.model
        self.embedder = embedder  # not a Module: holds the processor and the <|emb|> id

    def forward(self, head: str = "emb", **batch: torch.Tensor) -> torch.Tensor:
        """``(N_emb, D)`` / ``(B', D)`` L2-normalised embeddings, or a scalar NLL sum."""
        device = next(self.backbone.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        attention = batch.pop("attention_4d", None)
        pool = batch.pop("pool_positions", None)
        labels = batch.pop("labels", None)
        segments = batch.pop("turn_segments", None)
        if segments is not None:
            attention = isolated_turn_attention(segments)
            batch["position_ids"] = restart_turn_positions(
                default_position_ids(self.backbone, batch), segments
            )
        if head == "emb" and attention is None:
            return self.embedder.forward_embeddings(batch)
        hidden = backbone_hidden(self.backbone, batch, attention)
        if head == "emb":
            return token_embeddings(hidden, self.embedder.embed_positions(batch["input_ids"]))
        if head == "mean":
            rows = pool.any(dim=1)  # a keep-alive row (ZeRO-3) has no position: no embedding
            return mean_pool(hidden[rows], pool[rows])
        if head == "nll":
            return next_token_nll_sum(self.backbone, hidden, labels)
        raise ValueError(f"unknown head {head!r}")


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
    records_per_rank(cfg, world)  # the DeepSpeed config's batch must divide, with a clear error
    plans = cfg.plan()
    for plan in plans:
        _per_rank(plan, world)
    torch.manual_seed(cfg.seed + rank)  # dropout streams differ per rank, reproducibly
    # The heads choose their own readout; head "emb" must read `<|emb|>` even when the backbone
    # is an exported CoMa model, whose muco_embedding.json asks for the compression mean.
    embedder = Embedder.from_pretrained(
        backbone_dir,
        readout=Readout(),
        min_pixels=backbone_cfg.min_pixels,
        max_pixels=backbone_cfg.max_pixels,
        attn_implementation=backbone_cfg.attn_implementation,
    )
    # A method's own tokens (CoMa's compression tokens) exist before the engine owns the table.
    extra_tokens = stage_tokens(cfg)
    extra_ids = ensure_tokens(embedder.backbone, extra_tokens) if extra_tokens else []
    summary = prepare_for_training(
        embedder, cfg.finetune, cfg.gradient_checkpointing, extra_token_ids=extra_ids
    )
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
    zero3 = cfg.deepspeed.zero_stage == 3

    def build(plan: StagePlan) -> Objective:
        # Building may draw random numbers (a teacher model's init, on rank 0 only); it must
        # not move any generator, or a resumed run would drift from an uninterrupted one.
        nonlocal building
        state = capture_rng()
        began = time.perf_counter()
        try:
            return build_objective(
                plan, cfg, embedder.backbone.processor, records, image_root, zero3
            )
        finally:
            restore_rng(state)
            building += time.perf_counter() - began

    building = 0.0  # seconds spent building objectives: not training throughput

    report = TrainReport(trainable_parameters=summary.trainable, total_parameters=summary.total)
    state = load_checkpoint(engine, checkpoint_dir, rank)
    if state is not None:
        restore_rng(state.rng)
        report.resumed_from = state.step
        report.history = list(state.history)
    total = cfg.total_steps
    started = time.perf_counter()
    board = _tensorboard(tensorboard_dir) if rank == 0 else None
    bar = tqdm(
        total=total,
        initial=report.resumed_from,
        desc="train",
        unit="step",
        disable=rank != 0 or not progress,
    )
    model.train()
    objective: Objective | None = None
    for step in range(report.resumed_from, total):
        plan = plan_at(plans, step)
        if objective is None or objective.plan.index != plan.index:
            objective = None  # free the previous stage's data (and teacher vectors) first
            objective = build(plan)
        per_rank = _per_rank(plan, world)
        epoch, indices = batch_records(
            len(objective), plan.global_batch_size, cfg.seed, step - plan.start
        )
        objective.set_epoch(epoch)
        mine = indices[rank * per_rank : (rank + 1) * per_rank]
        samples = [objective[int(i)] for i in mine]
        chunks = [
            objective.collate(samples[start : start + plan.micro_batch_size])
            for start in range(0, per_rank, plan.micro_batch_size)
        ]
        loss = objective.step(engine, chunks)
        engine.step()
        bar.update()
        bar.set_postfix(loss=f"{float(loss):.4f}")
        report.steps += 1
        report.pairs += sum(objective.pairs(c) for c in chunks) * world
        report.tokens += sum(objective.tokens(c) for c in chunks) * world
        last_of_stage = step + 1 == plan.end
        if (step + 1) % cfg.log_every_steps == 0 or last_of_stage:
            elapsed = time.perf_counter() - started - building
            entry = {
                "step": step + 1,
                "loss": float(loss),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "pairs_per_s": report.pairs / elapsed,
                "tokens_per_s": report.tokens / elapsed,
                "stage": plan.index,
                "method": plan.method,
            }
            report.history.append(entry)
            if log is not None and rank == 0:
                log(entry)
            if board is not None:
                for name, value in entry.items():
                    if name not in ("step", "stage", "method"):
                        board.add_scalar(f"train/{name}", value, entry["step"])
        if (step + 1) % cfg.checkpoint.every_steps == 0 or last_of_stage:
            save_checkpoint(
                engine, checkpoint_dir, step + 1, cfg.checkpoint.keep_last, rank, report.history
            )
    report.seconds = time.perf_counter() - started - building
    bar.close()
    if board is not None:
        board.close()
    model.eval()
    return embedder, report


def _per_rank(plan: StagePlan, world: int) -> int:
    """Items each rank takes per step in ``plan``; a clear error when the batch does not divide."""
    where = f"train.stages[{plan.index}] ({plan.method})"
    if plan.global_batch_size % world:
        raise ValueError(
            f"{where}: global_batch_size ({plan.global_batch_size}) must be divisible by the "
            f"number of processes ({world})"
        )
    per_rank = plan.global_batch_size // world
    if per_rank % plan.micro_batch_size:
        raise ValueError(
            f"{where}: global_batch_size / processes ({per_rank}) must be a multiple of "
            f"micro_batch_size ({plan.micro_batch_size})"
        )
    return per_rank


def _tensorboard(directory: Path | None) -> object | None:
    if directory is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    return SummaryWriter(log_dir=str(directory))
