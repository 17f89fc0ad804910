"""Stage `validate`: outputs always written; exit 1 with the numbers when the gate fails."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from muco.config import ImagesConfig, SynthesizeConfig
from muco.images.pool import build_pool
from muco.records import M3T_COLUMNS, read_records
from muco.stages import validate as validate_stage
from muco.synthesis.generators import build_generator
from muco.synthesis.runner import synthesize


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    images = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": 56,
                "counts": {"train": 12, "test": 3, "test_unseen": 3},
            }
        }
    )
    build_pool(images, root / "images")
    cfg = SynthesizeConfig()
    synthesize(root / "images", root / "m3t", cfg, build_generator(cfg), root / "cache")
    return root


def _params(root: Path, min_records: int) -> Path:
    path = root / f"params-{min_records}.yaml"
    eval_set = {"kind": "pool", "path": str(root / "images"), "splits": ["test", "test_unseen"]}
    path.write_text(
        yaml.safe_dump(
            {"validate": {"min_records": min_records, "leakage": {"eval_sets": [eval_set]}}}
        )
    )
    return path


def _args(root: Path, params: Path, records: Path, tag: str) -> list[str]:
    return [
        "--params",
        str(params),
        "--records",
        str(records),
        "--images",
        str(root / "images"),
        "--out",
        str(root / tag / "valid"),
        "--quarantine",
        str(root / tag / "quarantine"),
        "--report",
        str(root / tag / "validation.json"),
        "--docs",
        str(root / tag / "docs"),
    ]


def test_passing_gate_writes_everything_and_exits_0(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(workspace, _params(workspace, 10), workspace / "m3t", "pass")
    assert validate_stage.main(args) == 0
    assert "gate passed" in capsys.readouterr().out
    report = json.loads((workspace / "pass" / "validation.json").read_text())
    assert (report["records"], report["valid"], report["quarantined"]) == (12, 12, 0)
    assert report["gate"] == {"passed": True, "failures": []}
    assert report["eval_sets"] == ["images"]
    assert report["expectations"]["no_eval_leakage"]["pass_rate"] == 1.0
    assert read_records(workspace / "pass" / "valid").num_rows == 12
    assert (workspace / "pass" / "docs" / "index.html").exists()


def test_failing_gate_exits_1_naming_the_threshold_after_writing_outputs(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(workspace, _params(workspace, 50), workspace / "m3t", "fail")
    assert validate_stage.main(args) == 1
    err = capsys.readouterr().err
    assert "GATE FAILED" in err
    assert "12 valid records, fewer than validate.min_records 50" in err
    report = json.loads((workspace / "fail" / "validation.json").read_text())
    assert report["gate"]["passed"] is False
    assert read_records(workspace / "fail" / "valid").num_rows == 12


def test_public_m3t_parquet_layout_is_accepted(workspace: Path) -> None:
    ours = read_records(workspace / "m3t")
    public = ours.select(list(M3T_COLUMNS))  # no provenance columns at all
    pq.write_table(public, workspace / "m3t_public.parquet")
    args = _args(workspace, _params(workspace, 10), workspace / "m3t_public.parquet", "public")
    assert validate_stage.main(args) == 0
    valid = read_records(workspace / "public" / "valid")
    assert valid.num_rows == 12 and valid["generator"].null_count == 12


def test_unknown_threshold_name_exits_2(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = workspace / "params-typo.yaml"
    params.write_text(yaml.safe_dump({"validate": {"per_expectation": {"uniqe_image": 0.1}}}))
    args = _args(workspace, params, workspace / "m3t", "typo")
    assert validate_stage.main(args) == 2
    assert "validate.per_expectation: unknown expectation(s) ['uniqe_image']" in (
        capsys.readouterr().err
    )
