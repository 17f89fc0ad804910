"""The train stage end to end on the tiny backbone: the loss falls, export reloads, and a run
killed mid-way resumes to bitwise the same weights as an uninterrupted run (CPU, fp32).

Each run is a subprocess, as DVC runs the stage: DeepSpeed's process group is per process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from muco.model.embedder import Embedder, EmbedInput

REPO = Path(__file__).resolve().parents[2]
PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}  # as in conftest.py
TRAIN = {
    "stages": ["muco"],
    "turns": 7,
    "global_batch_size": 8,
    "micro_batch_size": 4,
    "max_steps": 6,
    "lr": 0.001,
    "warmup_steps": 1,
    "temperature": 0.05,
    "gradient_checkpointing": False,
    "finetune": {"mode": "full", "freeze_vision": False},
    "deepspeed": {"zero_stage": 2},
    "checkpoint": {"every_steps": 2, "keep_last": 2},
    "log_every_steps": 1,
}


@pytest.fixture(scope="module")
def workspace(training_workspace: Path) -> Path:
    root = training_workspace
    params = {"backbone": {"source": "tiny", **PIXELS}, "train": TRAIN}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _command(root: Path, run: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "muco.stages.train",
        "--params",
        str(root / "params.yaml"),
        "--data",
        str(root / "m3t"),
        "--images",
        str(root / "images"),
        "--backbone",
        str(root / "backbone"),
        "--out",
        str(root / run / "model"),
        "--checkpoints",
        str(root / run / "checkpoints"),
        "--metrics",
        str(root / run / "train.json"),
        "--tensorboard",
        str(root / run / "tensorboard"),
        "--history",
        str(root / run / "log.csv"),
    ]


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO)}


def _run_to_end(root: Path, run: str) -> subprocess.CompletedProcess[str]:
    """The train stage for ``run`` in a child process, to the end; its output as text."""
    return subprocess.run(
        _command(root, run),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


@pytest.fixture(scope="module")
def uninterrupted(workspace: Path) -> Path:
    subprocess.run(
        _command(workspace, "full"),
        env=_environment(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return workspace / "full"


def test_loss_falls_and_outputs_are_written(uninterrupted: Path) -> None:
    metrics = json.loads((uninterrupted / "train.json").read_text())
    assert metrics["steps"] == 6
    assert metrics["final_loss"] < metrics["first_loss"]
    rows = (uninterrupted / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,grad_norm,pairs_per_s,tokens_per_s" and len(rows) == 7
    assert list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = sorted(p.name for p in (uninterrupted / "checkpoints").glob("*/step-*"))
    assert checkpoints == ["step-000004", "step-000006"]  # keep_last = 2


def test_export_reloads_with_plain_loaders(uninterrupted: Path, workspace: Path) -> None:
    model_dir = uninterrupted / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
    embedder = Embedder.from_pretrained(model_dir, **PIXELS)
    vectors = embedder.encode(
        [
            EmbedInput(text="a small red circle"),
            EmbedInput(image=workspace / "images" / "scenes" / "train" / "train-000000.png"),
        ]
    )
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_killed_run_resumes_to_bitwise_identical_weights(
    workspace: Path, uninterrupted: Path
) -> None:
    checkpoints = workspace / "resumed" / "checkpoints"
    process = subprocess.Popen(
        _command(workspace, "resumed"),
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/latest")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    (pointer,) = checkpoints.glob("*/latest")
    latest = pointer.read_text().strip()
    assert latest in {"step-000002", "step-000004"}, latest

    result = _run_to_end(workspace, "resumed")
    assert f"resumed from {int(latest[5:])}" in result.stdout
    # The log and the metrics cover the whole run, the steps before the kill included.
    assert _losses(workspace / "resumed") == _losses(uninterrupted)
    assert _metrics(workspace / "resumed") == _metrics(uninterrupted)

    full = load_file(str(uninterrupted / "model" / "model.safetensors"))
    resumed = load_file(str(workspace / "resumed" / "model" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for name in full:
        assert np.array_equal(full[name], resumed[name]), name


def _losses(run: Path) -> list[tuple[str, str]]:
    """(step, loss) of every row of a run's log; the throughput columns differ between runs."""
    rows = (run / "log.csv").read_text().splitlines()[1:]
    return [tuple(row.split(",")[:2]) for row in rows]


def _metrics(run: Path) -> dict:
    return json.loads((run / "train.json").read_text())


def test_rerunning_a_finished_run_reports_the_whole_run(
    workspace: Path, uninterrupted: Path
) -> None:
    shutil.copytree(uninterrupted / "checkpoints", workspace / "again" / "checkpoints")
    result = _run_to_end(workspace, "again")
    assert "train: 0 steps (resumed from 6)" in result.stdout
    assert _losses(workspace / "again") == _losses(uninterrupted)
    assert _metrics(workspace / "again") == _metrics(uninterrupted)


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_adapter_training_with_checkpointing_runs_and_exports_merged(
    workspace: Path, mode: str
) -> None:
    run = f"{mode}-run"
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"].update(
        max_steps=2,
        gradient_checkpointing=True,
        finetune={"mode": mode, "r": 4, "alpha": 8, "dropout": 0.1, "freeze_vision": True},
    )
    (workspace / f"{run}.yaml").write_text(yaml.safe_dump(params))
    command = _command(workspace, run)
    command[command.index("--params") + 1] = str(workspace / f"{run}.yaml")
    subprocess.run(command, env=_environment(), check=True, capture_output=True, timeout=600)
    metrics = json.loads((workspace / run / "train.json").read_text())
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2
    assert np.isfinite(metrics["final_loss"])
    merged = load_file(str(workspace / run / "model" / "model.safetensors"))
    assert not any("lora" in name for name in merged)
    embedder = Embedder.from_pretrained(workspace / run / "model", **PIXELS)
    assert embedder.encode([EmbedInput(text="a large blue square")]).shape == (1, 32)


def test_batches_cover_each_epoch_once_and_report_their_epoch() -> None:
    from muco.training.loop import batch_records

    # 10 records, batches of 4: two batches per epoch, the last 2 records of an epoch dropped.
    steps = [batch_records(10, 4, seed=0, step=s) for s in range(4)]
    assert [epoch for epoch, _ in steps] == [0, 0, 1, 1]
    first_epoch = np.concatenate([steps[0][1], steps[1][1]])
    assert len(set(first_epoch.tolist())) == 8
    assert np.array_equal(batch_records(10, 4, seed=0, step=3)[1], steps[3][1])
    assert not np.array_equal(steps[0][1], steps[2][1])


def test_run_key_follows_the_training_code(tmp_path: Path) -> None:
    from muco.config import Params
    from muco.stages.train import run_key, training_code_digest

    package = tmp_path / "muco"
    for name in ("training/loop.py", "training/objectives/muco.py", "model/tiny.py", "config.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(f"# {name}\n")
    (package / "evaluation").mkdir()
    (package / "evaluation" / "metrics.py").write_text("# metrics\n")
    before = training_code_digest(package)
    (package / "evaluation" / "metrics.py").write_text("# metrics, changed\n")
    assert training_code_digest(package) == before  # evaluation code does not train
    (package / "training" / "objectives" / "muco.py").write_text("# a new loss\n")
    changed = training_code_digest(package)
    assert changed != before

    data, backbone = tmp_path / "data", tmp_path / "backbone"
    data.mkdir()
    backbone.mkdir()
    params = Params()
    assert run_key(params, data, backbone, before) == run_key(params, data, backbone, before)
    assert run_key(params, data, backbone, before) != run_key(params, data, backbone, changed)
    assert run_key(params, data, backbone) == run_key(
        params, data, backbone, training_code_digest()
    )
