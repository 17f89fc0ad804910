"""``muco evaluate`` end to end on a tiny model: metrics, report, results store, cache, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from muco.cli import main as muco
from muco.evaluation.store import list_runs


@pytest.fixture
def params(tmp_path: Path, scene_pool: Path) -> Path:
    path = tmp_path / "params.yaml"
    values = {
        "backbone": {"min_pixels": 56 * 56, "max_pixels": 56 * 56},  # as the tiny_model fixture
        "evaluate": {
            "benchmarks": [{"kind": "scenes", "data": str(scene_pool), "candidates": 5}],
            "batch_size": 8,
        },
    }
    path.write_text(yaml.safe_dump(values))
    return path


def test_scores_model_and_baseline_into_metrics_report_and_store(
    tmp_path: Path, params: Path, tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    out, db, timings = tmp_path / "eval.json", tmp_path / "eval.duckdb", tmp_path / "timings.json"
    args = ["--params", str(params), "--model", str(tiny_model), "--baseline", str(tiny_model)]
    paths = ["--out", str(out), "--results", str(db), "--report", str(tmp_path / "report")]
    extra = ["--cache", str(tmp_path / "cache"), "--timings", str(timings), "--device", "cpu"]
    assert muco(["evaluate", *args, *paths, *extra]) == 0

    metrics = json.loads(out.read_text())
    assert set(metrics) == {"scenes", "baseline"}
    summary = metrics["scenes"]["summary"]
    assert summary["test/datasets"] == summary["test_unseen/datasets"] == 8
    assert 0.0 <= summary["test/overall"] <= 100.0
    assert len(metrics["scenes"]["datasets"]) == 16
    # Same model as baseline: the same numbers, and not one model call the second time.
    assert metrics["baseline"]["scenes"] == metrics["scenes"]
    encoded = json.loads(timings.read_text())
    assert encoded["model"]["encoded"] == encoded["model"]["unique_inputs"] > 0
    assert encoded["baseline"]["encoded"] == 0

    report = tmp_path / "report" / "scenes"
    assert {p.name for p in report.iterdir()} == {"README.md", "meta_tasks.png", "baseline.png"}
    assert f"{summary['test/overall']:.2f}" in (report / "README.md").read_text()

    runs = list_runs(db)
    assert [run.label for run in runs] == ["baseline", None]
    assert runs[0].settings["batch_size"] == 8
    capsys.readouterr()
    assert muco(["compare", "latest~1", "latest", "--db", str(db)]) == 0
    assert "Scenes-Grounding" in capsys.readouterr().out


def test_one_benchmark_from_the_command_line(
    tmp_path: Path, params: Path, scene_pool: Path, tiny_model: Path
) -> None:
    out = tmp_path / "eval.json"
    common = ["--params", str(params), "--model", str(tiny_model), "--out", str(out)]
    local = ["--results", str(tmp_path / "db"), "--no-cache", "--timings", str(tmp_path / "t")]
    code = muco(["evaluate", *common, *local, "--benchmark", "scenes", "--data", str(scene_pool)])
    assert code == 0
    assert json.loads(out.read_text())["scenes"]["summary"]["test/datasets"] == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmark", "mmeb", "--data", "."], "--benchmark mmeb needs --images"),
        (["--benchmark", "scenes"], "--benchmark scenes needs --data"),
        (["--benchmark", "mbeir", "--data", "nowhere"], "--data: nowhere does not exist"),
        (["--data", "."], "--data and --images need --benchmark"),
        (["--workers", "0"], "--workers must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tmp_path: Path,
    params: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    common = ["--params", str(params), "--model", str(tiny_model), "--out", str(tmp_path / "o")]
    assert muco(["evaluate", *common, *extra]) == 2
    assert message in capsys.readouterr().err
