"""champion_model: promoted when the new model beats the champion by the margin, else why not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, materialize

from orchestration.champion import CHAMPION_CHECK, champion_model
from orchestration.dvc import DvcResource

REPO_ROOT = Path(__file__).resolve().parents[2]


def _trained(workspace: Path, md5: str, overall: float) -> None:
    """As after dvc repro: a model, its hash in dvc.lock and its scores in metrics/eval.json."""
    model = workspace / "models" / "muco"
    # A new directory, as the train stage writes it (atomically): never the old files in place.
    shutil.rmtree(model, ignore_errors=True)
    model.mkdir(parents=True)
    (model / "model.safetensors").write_text(md5)
    lock = {"schema": "2.0", "stages": {"train": {"outs": [{"path": "models/muco", "md5": md5}]}}}
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock))
    summary = {"test/overall": overall, "test/overall/chance": 10.0, "test/datasets": 8}
    metrics = {"scenes": {"summary": summary, "datasets": {}}, "baseline": {}}
    (workspace / "metrics").mkdir(exist_ok=True)
    (workspace / "metrics" / "eval.json").write_text(json.dumps(metrics))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path)
    params = {"promote": {"metric": "scenes/test/overall", "margin": 2.0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _run(workspace: Path, instance: DagsterInstance) -> tuple[dict, object]:
    result = materialize(
        [champion_model],
        resources={"dvc": DvcResource(repo_root=str(workspace))},
        instance=instance,
    )
    assert result.success
    event = result.asset_materializations_for_node("champion_model")[0]
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == CHAMPION_CHECK
    return {key: value.value for key, value in event.metadata.items()}, check


def test_promotion_both_ways(workspace: Path) -> None:
    with DagsterInstance.ephemeral() as instance:
        _trained(workspace, "aaa.dir", 30.0)
        meta, check = _run(workspace, instance)
        assert meta["promoted"] and check.passed
        assert "no champion yet" in meta["reason"]
        champion = json.loads((workspace / "champion" / "champion.json").read_text())
        assert champion["model_md5"] == "aaa.dir"
        assert (workspace / "models" / "champion" / "model.safetensors").read_text() == "aaa.dir"

        # Better, but not by more than the margin: kept, and the check says why.
        _trained(workspace, "bbb.dir", 31.5)
        meta, check = _run(workspace, instance)
        assert not meta["promoted"] and not check.passed
        assert "31.50 does not beat the champion's 30.00 by more than 2.0" in meta["reason"]
        assert check.metadata["reason"].text == meta["reason"]
        assert meta["champion_model_md5"] == "aaa.dir"
        assert (workspace / "models" / "champion" / "model.safetensors").read_text() == "aaa.dir"

        # Clearly better: promoted, the history keeps both.
        _trained(workspace, "ccc.dir", 35.0)
        meta, check = _run(workspace, instance)
        assert meta["promoted"] and check.passed
        assert (workspace / "models" / "champion" / "model.safetensors").read_text() == "ccc.dir"
        history = (workspace / "champion" / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["model_md5"] for line in history] == ["aaa.dir", "ccc.dir"]

        # The champion again (nothing retrained): nothing to promote, and nothing wrong.
        meta, check = _run(workspace, instance)
        assert not meta["promoted"] and check.passed
        assert meta["reason"] == "this model is already the champion"


def test_an_unknown_metric_fails_with_the_known_ones(workspace: Path) -> None:
    (workspace / "params.yaml").write_text(yaml.safe_dump({"promote": {"metric": "mmeb/overall"}}))
    _trained(workspace, "aaa.dir", 30.0)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [champion_model],
            resources={"dvc": DvcResource(repo_root=str(workspace))},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert "promote.metric 'mmeb/overall' is not among the scores (scenes/test/overall)" in failure
