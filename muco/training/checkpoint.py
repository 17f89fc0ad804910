"""Atomic, resumable checkpoints: DeepSpeed engine state plus the trainer's own state.

Layout under the checkpoint root::

    step-000050/        one complete checkpoint (DeepSpeed's files + trainer_state.json)
    step-000100/
    latest              the tag of the newest complete checkpoint, replaced atomically

A checkpoint is written under a temporary name and renamed into place only when every rank
has finished writing, then ``latest`` moves; a run killed at any moment therefore resumes from
the last complete checkpoint. ``trainer_state.json`` holds the step (which fixes the data
position: batches are a pure function of seed and step) and the logged history up to it, so a
resumed run reports and plots the whole run; ``rng-rank-N.json`` holds each rank's RNG states
(dropout draws differ per rank), as JSON.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muco.io import atomic_write_json, atomic_write_text

LATEST = "latest"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class TrainerState:
    """Where training stands: the next step to run, the RNG states at that point and the
    entries logged before it (one dict per logged step, as :class:`TrainReport` keeps them)."""

    step: int
    rng: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def capture_rng() -> dict[str, Any]:
    """The python, numpy and torch (and CUDA) RNG states, JSON-able."""
    state: dict[str, Any] = {
        "python": _encode(random.getstate()),
        "numpy": _encode(np.random.get_state()),
        "torch": base64.b64encode(torch.random.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_decode_python(state["python"]))
    np.random.set_state(_decode_numpy(state["numpy"]))
    torch.random.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


def _bytes_tensor(encoded: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8)


def _encode(value: Any) -> Any:
    # random and numpy states are nested tuples of ints, strings, floats and arrays.
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def _decode_python(value: list) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _decode_numpy(value: list) -> tuple:
    name, keys, pos, has_gauss, cached = value
    return (name, np.array(keys["ndarray"], dtype=keys["dtype"]), pos, has_gauss, cached)


def latest_tag(root: Path) -> str | None:
    """The newest complete checkpoint's tag, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if (Path(root) / tag / STATE_FILE).exists() else None


def save_checkpoint(
    engine: Any,
    root: Path,
    step: int,
    keep_last: int,
    rank: int,
    history: Sequence[dict[str, Any]] = (),
) -> Path:
    """Save engine and trainer state for ``step`` atomically; keep the newest ``keep_last``.

    ``history`` is the run's logged entries so far (rank 0's are written). Collective: every
    rank must call it (DeepSpeed writes each rank's partitions).
    """
    root = Path(root)
    tag = f"step-{step:06d}"
    staging = root / f".tmp-{tag}"
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    torch.distributed.barrier()
    engine.save_checkpoint(str(staging), tag=tag, save_latest=False)
    atomic_write_json(staging / tag / f"rng-rank-{rank}.json", capture_rng())
    torch.distributed.barrier()
    if rank == 0:
        atomic_write_json(staging / tag / STATE_FILE, {"step": step, "history": list(history)})
        final = root / tag
        shutil.rmtree(final, ignore_errors=True)
        (staging / tag).rename(final)
        shutil.rmtree(staging, ignore_errors=True)
        atomic_write_text(root / LATEST, tag + "\n")
        _prune(root, keep_last)
    torch.distributed.barrier()
    return root / tag


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(engine: Any, root: Path, rank: int) -> TrainerState | None:
    """Load the newest complete checkpoint into ``engine``; None when there is none."""
    tag = latest_tag(root)
    if tag is None:
        return None
    load_path, _ = engine.load_checkpoint(str(root), tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
    state = json.loads((Path(root) / tag / STATE_FILE).read_text(encoding="utf-8"))
    rng = json.loads((Path(root) / tag / f"rng-rank-{rank}.json").read_text(encoding="utf-8"))
    # Checkpoints written before the history was kept resume with an empty one.
    return TrainerState(step=state["step"], rng=rng, history=state.get("history", []))
