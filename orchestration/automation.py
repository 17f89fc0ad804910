"""Jobs, the retraining schedule and the new-data sensor.

Schedules and sensors are stopped by default when developing (``make ui``) and running by
default in a deployment (``MUCO_DEPLOYMENT=1``); either can be switched in the UI. Every job
carries the tag that the run queue (``orchestration/dagster.yaml``) limits to one run at a
time, because all of them touch the DVC workspace.
"""

import os
from pathlib import Path

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from muco.config import load_params
from muco.images.fingerprint import source_fingerprint
from orchestration.dvc import REPO_ROOT

# Runs with this tag are admitted one at a time by the run queue.
WORKSPACE_TAG = {"muco/workspace": "dvc"}
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays at 03:00
SENSOR_INTERVAL_S = 300


def deployed() -> bool:
    """True when ``$MUCO_DEPLOYMENT`` says this instance is a deployment, not a laptop."""
    return os.environ.get("MUCO_DEPLOYMENT", "").strip().lower() in {"1", "true", "yes", "on"}


pipeline_job = define_asset_job(
    "pipeline",
    selection=AssetSelection.all(),
    description="Materialise every asset, upstream first.",
    tags=WORKSPACE_TAG,
)

retrain_job = define_asset_job(
    "retrain",
    selection=AssetSelection.assets("validated_records").downstream(),
    description="Validate the current records again, train, evaluate and consider promotion.",
    tags=WORKSPACE_TAG,
)

new_images_job = define_asset_job(
    "new_images",
    selection=AssetSelection.assets("image_pool").downstream(),
    description="Rebuild the image pool, then synthesise, validate, train, evaluate, promote.",
    tags=WORKSPACE_TAG,
)

retrain_schedule = ScheduleDefinition(
    name="retrain_schedule",
    job=retrain_job,
    cron_schedule=os.environ.get("MUCO_RETRAIN_CRON", DEFAULT_RETRAIN_CRON),
    execution_timezone=os.environ.get("MUCO_RETRAIN_TZ", "UTC"),
    default_status=DefaultScheduleStatus.RUNNING if deployed() else DefaultScheduleStatus.STOPPED,
    description="Retrain on the current validated records (cron: $MUCO_RETRAIN_CRON).",
)


@sensor(
    job=new_images_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING if deployed() else DefaultSensorStatus.STOPPED,
    description="Runs new_images when the image source's content changes (sha256 of its files).",
)
def image_source_sensor(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    """Compare the source's content fingerprint with the cursor; a change requests a run."""
    root = Path(os.environ.get("MUCO_WORKSPACE", REPO_ROOT))
    source = load_params(root / "params.yaml").images.source
    try:
        fingerprint = source_fingerprint(source, root)
    except (FileNotFoundError, NotADirectoryError) as error:
        return SkipReason(f"image source unavailable: {error}")
    if context.cursor is None:
        context.update_cursor(fingerprint)
        return SkipReason(f"first look at the {source.kind} source ({fingerprint[:12]}); watching")
    if context.cursor == fingerprint:
        return SkipReason(f"the {source.kind} source is unchanged ({fingerprint[:12]})")
    context.update_cursor(fingerprint)
    # The run key makes a repeated tick with the same content a no-op, even after a restart.
    return RunRequest(run_key=fingerprint, tags={"muco/source_fingerprint": fingerprint})
