"""gather_with_grad and rank_offset on two gloo processes, against one process on all the data."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from muco.training.distributed import gather_with_grad, rank_offset
from muco.training.losses import info_nce

WORLD = 2
ROWS = (3, 2)  # unequal on purpose
DIM = 4
TAU = 0.1


def _global_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return F.normalize(
        torch.randn(sum(ROWS), DIM, generator=generator, dtype=torch.float64), dim=-1
    )


def _rank_loss(local: torch.Tensor, gathered: torch.Tensor, offset: int) -> torch.Tensor:
    """This rank's share of the global loss: its own rows as queries against all rows."""
    positives = offset + torch.arange(local.shape[0])
    return info_nce(local, gathered, positives, TAU) * local.shape[0]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        full = _global_batch()
        start = sum(ROWS[:rank])
        local = full[start : start + ROWS[rank]].clone().requires_grad_()

        offset = rank_offset(local.shape[0])
        gathered = gather_with_grad(local)
        _rank_loss(local, gathered, offset).backward()

        # Single process: the sum of both ranks' losses on the concatenated data.
        reference = full.clone().requires_grad_()
        sum(
            _rank_loss(reference[s : s + n], reference, s)
            for s, n in zip((0, ROWS[0]), ROWS, strict=True)
        ).backward()

        expected_grad = reference.grad[start : start + ROWS[rank]]
        result = {
            "offset": offset,
            "gathered_matches": torch.equal(gathered.detach(), full),
            "grad_error": (local.grad - expected_grad).abs().max().item(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_gather_with_grad_on_two_ranks(tmp_path: Path) -> None:
    # A child that raises makes spawn raise here; a child that never writes fails the read.
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["offset"] == sum(ROWS[:rank])
        assert result["gathered_matches"]
        assert result["grad_error"] < 1e-12


def test_single_process_is_identity() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert rank_offset(3) == 0
