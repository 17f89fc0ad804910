"""The `muco` command dispatches to the stage mains and summarises what was produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from muco.cli import main
from muco.summary import render_summary


def test_summary_lists_stages_in_pipeline_order(tmp_path: Path) -> None:
    (tmp_path / "backbone.json").write_text(json.dumps({"parameters": 1234567}))
    (tmp_path / "images.json").write_text(json.dumps({"images": 800, "by": {"a": 1}}))
    text = render_summary(tmp_path)
    assert text.index("[images]") < text.index("[backbone]")
    assert "1,234,567" in text and "a=1" in text


def test_summary_gives_headline_scores_beside_baseline_and_chance(tmp_path: Path) -> None:
    summary = {"test/overall": 40.0, "test/overall/chance": 10.8, "test/datasets": 8}
    metrics = {
        "scenes": {"summary": summary, "datasets": {"test/Scenes-Count": 50.0}},
        "baseline": {"scenes": {"summary": {**summary, "test/overall": 11.25}}},
    }
    (tmp_path / "train.json").write_text(json.dumps({"steps": 3}))
    (tmp_path / "eval.json").write_text(json.dumps(metrics))
    text = render_summary(tmp_path)
    assert text.index("[train]") < text.index("[eval]")
    assert "scenes test/overall  40.0 (baseline 11.2, chance 10.8)" in text
    assert "Scenes-Count" not in text and "datasets" not in text


def test_summary_without_metrics_says_what_to_do(tmp_path: Path) -> None:
    assert "make run" in render_summary(tmp_path)


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_console_script_runs_a_stage(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("images:\n  source: {kind: scenes, image_size: 56, counts: {train: 2}}\n")
    out = tmp_path / "pool"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "muco"),
            "images",
            "--params",
            str(params),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "images: 202 images from scenes" in result.stdout


def test_summary_condenses_validation_to_what_failed(tmp_path: Path) -> None:
    expectations = {
        "unique_image": {"failed": 3, "fail_rate": 0.03, "description": "long text"},
        "turn_count": {"failed": 0, "fail_rate": 0.0, "description": "long text"},
    }
    gate = {"passed": False, "failures": ["too many rejects"]}
    (tmp_path / "validation.json").write_text(
        json.dumps({"records": 100, "expectations": expectations, "gate": gate})
    )
    text = render_summary(tmp_path)
    assert "failed_expectations  unique_image=3" in text
    assert "turn_count" not in text and "long text" not in text
    assert "passed=no" in text and "too many rejects" in text
