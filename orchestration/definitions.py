"""The Dagster code location: ``dagster dev`` (``make ui``) loads ``defs`` from here."""

from __future__ import annotations

from dagster import Definitions

from orchestration.assets import (
    backbone,
    benchmark_scores,
    embedding_model,
    image_pool,
    m3t_records,
    validated_records,
)
from orchestration.automation import (
    image_source_sensor,
    new_images_job,
    pipeline_job,
    retrain_job,
    retrain_schedule,
)
from orchestration.champion import champion_model
from orchestration.dvc import DvcResource

defs = Definitions(
    assets=[
        image_pool,
        backbone,
        m3t_records,
        validated_records,
        embedding_model,
        benchmark_scores,
        champion_model,
    ],
    jobs=[pipeline_job, retrain_job, new_images_job],
    schedules=[retrain_schedule],
    sensors=[image_source_sensor],
    resources={"dvc": DvcResource()},
)
