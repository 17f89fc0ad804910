"""ZeRO-2 and ZeRO-3 with one and two processes (gloo) give the same loss curve for the same
global batch, and a two-process ZeRO-3 run whose ranks differ in image content finishes.

Each run is the train stage as DVC or torchrun would start it.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from muco.records import read_records

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}  # as in conftest.py


def _train_params(zero_stage: int) -> dict:
    return {
        "stages": ["muco"],
        "global_batch_size": 8,
        "micro_batch_size": 2,
        "max_steps": 3,
        "lr": 0.001,
        "warmup_steps": 1,
        "temperature": 0.05,
        "gradient_checkpointing": False,
        "finetune": {"mode": "full", "freeze_vision": False},
        "deepspeed": {"zero_stage": zero_stage},
        "checkpoint": {"every_steps": 100, "keep_last": 1},
        "log_every_steps": 1,
    }


@pytest.fixture(scope="module")
def workspace(training_workspace: Path) -> Path:
    root = training_workspace
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(
    root: Path, name: str, zero_stage: int, processes: int, data: Path, via_params: bool = False
) -> list[float]:
    """Train and return the loss curve; ``via_params`` makes the stage launch torchrun itself."""
    run = root / name
    run.mkdir()
    train = _train_params(zero_stage)
    if via_params:
        train["distributed"] = {"launcher": "torchrun", "nproc_per_node": processes}
    params = {"backbone": {"source": "tiny", **PIXELS}, "train": train}
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    stage = [
        "-m",
        "muco.stages.train",
        "--params",
        str(run / "params.yaml"),
        "--data",
        str(data),
        "--images",
        str(root / "images"),
        "--backbone",
        str(root / "backbone"),
        "--out",
        str(run / "model"),
        "--checkpoints",
        str(run / "checkpoints"),
        "--metrics",
        str(run / "train.json"),
        "--history",
        str(run / "log.csv"),
        "--timings",
        str(run / "timings.json"),
        "--tensorboard",
        str(run / "tensorboard"),
    ]
    launcher = (
        [sys.executable]
        if processes == 1 or via_params
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
        ]
    )
    result = subprocess.run([*launcher, *stage], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with (run / "log.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_loss_curves_match_across_zero_stages_and_process_counts(workspace: Path) -> None:
    data = workspace / "m3t"
    reference = _run(workspace, "zero2-1", 2, 1, data)
    assert len(reference) == 3
    for name, stage, processes in [("zero2-2", 2, 2), ("zero3-1", 3, 1), ("zero3-2", 3, 2)]:
        curve = _run(workspace, name, stage, processes, data)
        np.testing.assert_allclose(curve, reference, rtol=1e-4, err_msg=name)
    # The same two-process run, started plainly: train.distributed makes it launch torchrun.
    curve = _run(workspace, "zero2-params", 2, 2, data, via_params=True)
    np.testing.assert_allclose(curve, reference, rtol=1e-4, err_msg="launched from params")
    assert (workspace / "zero3-2" / "model" / "model.safetensors").exists()


def test_zero3_with_text_only_micro_batches_on_one_rank_finishes(workspace: Path) -> None:
    # Half the records lose their image: with micro-batches of 2 records, some micro-batches
    # hold images on one rank while the other rank's are text-only.
    table = read_records(workspace / "m3t")
    paths = table["qry_image_path"].to_pylist()
    mixed = [p if i % 4 < 2 else "" for i, p in enumerate(paths)]
    shas = [s if i % 4 < 2 else None for i, s in enumerate(table["image_sha256"].to_pylist())]
    table = table.set_column(
        table.schema.get_field_index("qry_image_path"), "qry_image_path", pa.array(mixed)
    )
    table = table.set_column(
        table.schema.get_field_index("image_sha256"),
        "image_sha256",
        pa.array(shas, pa.string()),
    )
    (workspace / "mixed").mkdir()
    pq.write_table(table, workspace / "mixed" / "part-00000.parquet")
    curve = _run(workspace, "zero3-mixed", 3, 2, workspace / "mixed")
    assert len(curve) == 3 and all(np.isfinite(curve))
