"""Pooling the backbone's last hidden states into L2-normalised embeddings (METHODS.md §1, §4).

Shared by inference (:class:`muco.model.embedder.Embedder`) and training
(:mod:`muco.training.loop`), so that a model is scored with exactly the readout it was trained
with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_pool(hidden: Tensor, positions: Tensor) -> Tensor:
    """``(B, D)`` float32: per row, the L2-normalised mean of ``hidden`` (B, L, D) over the
    boolean ``positions`` (B, L).

    CoMa's embedding: the mean of the compression tokens' last hidden states (METHODS.md §4).
    Raises ``ValueError`` when a row has no position (its mean is undefined).
    """
    counts = positions.sum(dim=1, keepdim=True)
    if (counts == 0).any():
        raise ValueError("a row has no position to pool over")
    summed = torch.einsum("bl,bld->bd", positions.to(torch.float32), hidden.float())
    return F.normalize(summed / counts, dim=-1)
