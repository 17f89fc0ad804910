"""The Dagster code location: ``dagster dev`` (``make ui``) loads ``defs`` from here."""

from __future__ import annotations

from dagster import Definitions, define_asset_job

from orchestration.assets import (
    backbone,
    benchmark_scores,
    embedding_model,
    image_pool,
    m3t_records,
    validated_records,
)
from orchestration.dvc import DvcResource

pipeline_job = define_asset_job(
    "pipeline", selection="*", description="Materialise every asset, upstream first."
)

defs = Definitions(
    assets=[
        image_pool,
        backbone,
        m3t_records,
        validated_records,
        embedding_model,
        benchmark_scores,
    ],
    jobs=[pipeline_job],
    resources={"dvc": DvcResource()},
)
