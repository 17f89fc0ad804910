"""Cross-rank helpers for contrastive losses over the global batch (METHODS.md §1).

MuCo's InfoNCE runs from each query to *all* targets of the global batch, so embeddings are
all-gathered across ranks **with gradient**: a plain ``dist.all_gather`` returns tensors that are
cut off from autograd, and the other ranks' rows would then act as constants.

Without an initialised process group, or with a single rank, every helper is the identity, so
the same training code runs on one CPU and on a cluster.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size() -> int:
    """Ranks in the default process group; 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather_counts(count: int, device: torch.device) -> list[int]:
    """Every rank's ``count``, in rank order (a collective: all ranks must call it)."""
    local = torch.tensor([count], dtype=torch.long, device=device)
    counts = [torch.empty_like(local) for _ in range(_world_size())]
    dist.all_gather(counts, local)
    return [int(c.item()) for c in counts]


def _backend_device() -> torch.device:
    """Where collective buffers must live: NCCL only moves CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward routes gradient back to the local shard."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        counts = _all_gather_counts(tensor.shape[0], tensor.device)
        # all_gather needs equal shapes on every rank; the last micro-batch of an epoch or a
        # filtered batch can be shorter, so pad to the largest count and strip afterwards.
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        shards = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(shards, padded)
        ctx.counts = counts
        ctx.rank = dist.get_rank()
        return torch.cat([shard[:count] for shard, count in zip(shards, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # Every rank's loss depends on every rank's embeddings, so this rank's rows receive a
        # gradient from each rank's loss; summing them is the gradient of the sum of all rank
        # losses. DDP/DeepSpeed then average parameter gradients over ranks, which yields the
        # gradient of the mean rank loss (exactly the global loss when all ranks compute it).
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, keeping autograd for the local rows.

    Args:
        tensor: ``(n_r, *rest)`` on rank ``r``; ``n_r`` may differ between ranks (the counts are
            all-gathered first, shards padded to the largest and stripped after the gather).

    Returns:
        ``(sum_r n_r, *rest)``, rank 0's rows first. Backward all-reduces (sums) the incoming
        gradient and hands each rank its own slice. Without an initialised process group, or
        with world size 1, ``tensor`` itself is returned.
    """
    if _world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor.contiguous())


def rank_offset(local_count: int) -> int:
    """Global row index of this rank's first row in :func:`gather_with_grad`'s output.

    A local query's positive in the gathered targets is ``rank_offset(n_local) + i``. A
    collective: every rank must call it. 0 without distributed training.
    """
    if _world_size() == 1:
        return 0
    counts = _all_gather_counts(local_count, _backend_device())
    return sum(counts[: dist.get_rank()])
