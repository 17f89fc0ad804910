"""A seeded block of torch's global generator that leaves the caller's stream untouched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the block and restore its previous state afterwards.

    Building and pretraining the tiny backbone then draw the same numbers whatever ran before,
    and the caller's own random stream continues as if the block had not run.
    """
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        torch.random.set_rng_state(state)
