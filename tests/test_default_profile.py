"""The default profile end to end: what `make run` promises about the trained model.

Runs every stage of ``dvc.yaml`` (its own commands, in order) with the repository's
``params.yaml`` in a scratch directory, then reads ``metrics/eval.json``. About 45 minutes on
two cores, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLIT = "test"
META_TASKS = ("classification", "vqa", "retrieval", "grounding")
# Issue 6's bar: three times chance overall and per meta-task on `test`. Measured over three
# training seeds and two backbones, the lowest are grounding 3.1x and VQA 3.7x (README,
# "Instruction-tuned language model").
TIMES_CHANCE = 3.0
# "Clearly above the untrained backbone": by at least this many points of hit@1.
MARGIN_OVER_BACKBONE = 5.0


def _run_stages(workspace: Path) -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name, stage in stages.items():
        command = shlex.split(stage["cmd"])
        assert command[0] == "python", f"stage {name}: unexpected command {stage['cmd']!r}"
        result = subprocess.run(
            [sys.executable, *command[1:]], cwd=workspace, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"stage {name} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def default_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = tmp_path_factory.mktemp("default_profile")
    shutil.copy(REPO_ROOT / "params.yaml", workspace / "params.yaml")
    _run_stages(workspace)
    return workspace


@pytest.mark.slow
def test_default_profile_training_loss_falls_clearly(default_profile: Path) -> None:
    train = json.loads((default_profile / "metrics/train.json").read_text())
    assert (
        train["steps"]
        == yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]["max_steps"]
    )
    assert train["final_loss"] < train["first_loss"] / 4


@pytest.mark.slow
def test_default_profile_beats_chance_and_the_backbone_on_scenes_bench(
    default_profile: Path,
) -> None:
    scores = json.loads((default_profile / "metrics/eval.json").read_text())
    trained, backbone = scores["scenes"]["summary"], scores["baseline"]["scenes"]["summary"]
    for key in ("overall", *META_TASKS):
        score, chance = trained[f"{SPLIT}/{key}"], trained[f"{SPLIT}/{key}/chance"]
        assert score >= TIMES_CHANCE * chance, f"{key}: {score:.1f} < {TIMES_CHANCE} x {chance:.1f}"
        for split in (SPLIT, "test_unseen"):
            untrained = backbone[f"{split}/{key}"]
            assert trained[f"{split}/{key}"] >= untrained + MARGIN_OVER_BACKBONE, (
                f"{split}/{key}: {trained[f'{split}/{key}']:.1f} vs backbone {untrained:.1f}"
            )
