"""DeepSpeed set-up: the process group, the engine config derived from ``train`` params.

The global batch (records per optimizer step, all ranks together) is the parameter; each rank
takes ``global / world`` records and encodes them in micro-batches of ``micro_batch_size``. With
feature caching the micro-batches are chunks of one large contrastive batch, so the optimizer
steps once per global batch and gradient accumulation is driven by hand (the boundary is set
before each backward) rather than by DeepSpeed's micro-step counter.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from muco.config import TrainConfig

# DeepSpeed on CPU would JIT-compile a shared-memory all-reduce (~45 s of g++ per machine) the
# first time a process group starts. It only speeds up intra-node CPU collectives; set
# MUCO_DS_SHM_COMM=1 to have it.
SHM_COMM_ENV = "MUCO_DS_SHM_COMM"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Start (or join) the process group; returns ``(rank, world_size)``.

    Launched by torchrun or the deepspeed launcher, the environment names the group. Run as a
    plain process, this becomes a group of one on a free loopback port.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # after DS_ACCELERATOR: the accelerator is chosen at import

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    if not torch.cuda.is_available() and os.environ.get(SHM_COMM_ENV) != "1":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def records_per_rank(cfg: TrainConfig, world_size: int) -> int:
    """Records each rank encodes per step; a clear error when the batch does not divide."""
    if cfg.global_batch_size % world_size:
        raise ValueError(
            f"train.global_batch_size ({cfg.global_batch_size}) must be divisible by the "
            f"number of processes ({world_size})"
        )
    per_rank = cfg.global_batch_size // world_size
    if per_rank % cfg.micro_batch_size:
        raise ValueError(
            f"train.global_batch_size / processes ({per_rank}) must be a multiple of "
            f"train.micro_batch_size ({cfg.micro_batch_size})"
        )
    return per_rank


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg`` on ``world_size`` processes."""
    micro_batches = records_per_rank(cfg, world_size) // cfg.micro_batch_size
    zero: dict[str, Any] = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": micro_batches,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        # The optimizer is a torch AdamW passed in by the client: DeepSpeed must not swap in
        # its compiled CPU Adam (METHODS.md §1: zero_force_ds_cpu_optimizer false).
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own prints would interleave
        "wall_clock_breakdown": False,
    }
