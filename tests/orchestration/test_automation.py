"""The retraining schedule, the new-data sensor and the jobs, through Dagster's context builders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)
from PIL import Image

from orchestration.automation import WORKSPACE_TAG, image_source_sensor, retrain_schedule
from orchestration.definitions import defs


@pytest.fixture
def folder_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace whose params read images from a folder (the sensor's MUCO_WORKSPACE)."""
    (tmp_path / "incoming").mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "incoming" / "a.png")
    params = {"images": {"source": {"kind": "folder", "path": "incoming"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MUCO_WORKSPACE", str(tmp_path))
    return tmp_path


def _tick(cursor: str | None) -> tuple[RunRequest | SkipReason, str | None]:
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance, cursor=cursor)
        result = image_source_sensor(context)
        return result, context.cursor


def test_the_sensor_requests_a_run_only_when_content_changes(folder_workspace: Path) -> None:
    first, cursor = _tick(None)
    assert isinstance(first, SkipReason) and "first look" in first.skip_message
    same, same_cursor = _tick(cursor)
    assert isinstance(same, SkipReason) and "unchanged" in same.skip_message
    assert same_cursor == cursor

    # Touching or renaming is not new data: only content counts.
    (folder_workspace / "incoming" / "a.png").touch()
    assert isinstance(_tick(cursor)[0], SkipReason)

    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder_workspace / "incoming" / "b.png")
    request, new_cursor = _tick(cursor)
    assert isinstance(request, RunRequest)
    assert request.run_key == new_cursor != cursor
    assert request.tags["muco/source_fingerprint"] == new_cursor


def test_the_sensor_skips_with_a_reason_when_the_source_is_missing(
    folder_workspace: Path,
) -> None:
    (folder_workspace / "incoming" / "a.png").unlink()
    (folder_workspace / "incoming").rmdir()
    result, _ = _tick("previous")
    assert isinstance(result, SkipReason)
    assert "image source unavailable" in result.skip_message
    assert "incoming" in result.skip_message


def test_the_schedule_launches_retrain_and_is_stopped_in_development() -> None:
    assert retrain_schedule.job_name == "retrain"
    assert retrain_schedule.default_status == DefaultScheduleStatus.STOPPED
    with DagsterInstance.ephemeral() as instance:
        (request,) = retrain_schedule.evaluate_tick(
            build_schedule_context(instance=instance)
        ).run_requests
    assert isinstance(request, RunRequest)


def test_jobs_select_their_part_of_the_graph_and_queue_on_the_workspace() -> None:
    def keys(job: str) -> set[str]:
        selected = defs.resolve_job_def(job).asset_layer.executable_asset_keys
        return {key.to_user_string() for key in selected}

    assert keys("retrain") == {
        "validated_records",
        "embedding_model",
        "benchmark_scores",
        "champion_model",
    }
    assert keys("new_images") == keys("pipeline") - {"backbone"}
    assert (
        AssetKey("backbone") in defs.resolve_job_def("pipeline").asset_layer.executable_asset_keys
    )
    for job in ("pipeline", "retrain", "new_images"):
        assert defs.resolve_job_def(job).tags.items() >= WORKSPACE_TAG.items()
