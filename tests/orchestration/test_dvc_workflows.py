"""DVC around the Dagster assets: pushing outputs to a remote, metrics, plots and experiments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, materialize
from muco_scratch import make_workspace, run_dvc

from orchestration.assets import image_pool
from orchestration.dvc import PUSH_ENV, DvcError, DvcResource

STAGE_METRICS = ("images", "backbone", "synthesize", "validation", "train", "eval")
STAGES = ("images", "backbone", "synthesize", "validate", "train", "evaluate")


def _object(store: Path, md5: str) -> Path:
    """Where a DVC 3 cache or remote keeps the object with this hash."""
    return store / "files" / "md5" / md5[:2] / md5[2:]


def _materialise_image_pool(workspace: Path) -> None:
    resource = DvcResource(repo_root=str(workspace))
    with DagsterInstance.ephemeral() as instance:
        assert materialize([image_pool], resources={"dvc": resource}, instance=instance).success


def test_push_env_sends_the_stage_outputs_to_the_default_remote(
    dvc_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    run_dvc(dvc_workspace, "remote", "add", "--default", "scratch", str(store))

    monkeypatch.delenv(PUSH_ENV, raising=False)
    _materialise_image_pool(dvc_workspace)
    assert not store.exists(), "pushed although MUCO_DVC_PUSH was not set"

    # Nothing changed, so DVC skips the stage; the outputs still have to reach the remote.
    monkeypatch.setenv(PUSH_ENV, "1")
    _materialise_image_pool(dvc_workspace)
    outs = yaml.safe_load((dvc_workspace / "dvc.lock").read_text())["stages"]["images"]["outs"]
    by_path = {out["path"]: out["md5"] for out in outs}
    dir_md5 = by_path["data/images"]
    listing = json.loads(_object(dvc_workspace / ".dvc" / "cache", dir_md5).read_text())
    # The pool directory, every file in it, and the stage's (cached) metrics file.
    expected = {
        _object(store, dir_md5),
        *(_object(store, entry["md5"]) for entry in listing),
        _object(store, by_path["metrics/images.json"]),
    }
    assert len(listing) > 12, listing  # 12 images, the manifest, the preview, ...
    assert {p for p in store.rglob("*") if p.is_file()} == expected
    status = run_dvc(dvc_workspace, "status", "--cloud", "images").stdout
    assert "in sync" in status, status


def test_a_bad_push_value_fails_before_the_stage_runs(
    dvc_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PUSH_ENV, "sometimes")
    with pytest.raises(DvcError, match="MUCO_DVC_PUSH='sometimes'"):
        DvcResource(repo_root=str(dvc_workspace)).repro("images", lambda line: None)
    assert not (dvc_workspace / "dvc.lock").exists()


def _experiments(workspace: Path) -> list[dict[str, Any]]:
    """The experiment runs ``dvc exp show`` lists (under the baseline commit)."""
    rows = json.loads(run_dvc(workspace, "exp", "show", "--json").stdout)
    experiments = [exp for row in rows for exp in row.get("experiments") or []]
    return [rev["data"] for exp in experiments for rev in exp["revs"]]


def _params(run: dict[str, Any]) -> dict[str, Any]:
    return run["params"]["params.yaml"]["data"]


def test_exp_run_sets_a_param_and_runs_one_stage(dvc_git_workspace: Path) -> None:
    run_dvc(dvc_git_workspace, "exp", "run", "--set-param", "images.preview_count=2", "images")
    (run,) = _experiments(dvc_git_workspace)
    assert _params(run)["images"]["preview_count"] == 2
    assert run["metrics"]["metrics/images.json"]["data"]["images"] == 12
    assert not (dvc_git_workspace / "data" / "m3t").exists()  # only the target stage ran
    shown = json.loads(run_dvc(dvc_git_workspace, "metrics", "show", "--json").stdout)
    assert shown[""]["data"]["metrics/images.json"]["data"]["images"] == 12


@pytest.mark.slow  # 50-90 s on two cores: the whole graph, then training again
def test_whole_pipeline_metrics_plots_and_a_training_experiment(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "workspace", git=True, whole_graph=True)
    run_dvc(workspace, "repro")

    metrics = json.loads(run_dvc(workspace, "metrics", "show", "--json").stdout)[""]["data"]
    for name in STAGE_METRICS:
        assert "data" in metrics[f"metrics/{name}.json"], metrics[f"metrics/{name}.json"]
    assert metrics["metrics/train.json"]["data"]["steps"] == 2
    assert metrics["metrics/validation.json"]["data"]["gate"]["passed"] is True

    out = tmp_path / "plots"
    run_dvc(workspace, "plots", "show", "--out", str(out))
    page = (out / "index.html").read_text()
    assert "metrics/train_log.csv" in page and '"loss"' in page

    # A second repro has nothing to do.
    assert "Data and pipelines are up to date" in run_dvc(workspace, "repro").stdout

    # One training parameter changed: training and evaluation run again, nothing upstream.
    log = run_dvc(workspace, "exp", "run", "--set-param", "train.max_steps=3").stdout
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in log}
    assert ran == {"train", "evaluate"}, log
    (run,) = _experiments(workspace)
    assert _params(run)["train"]["max_steps"] == 3
    assert run["metrics"]["metrics/train.json"]["data"]["steps"] == 3
