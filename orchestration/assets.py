"""Dagster assets, each running one DVC stage through :class:`DvcResource`.

An asset's data version is the content hash ``dvc.lock`` records for the stage's outputs, so
Dagster and DVC agree on what was produced; its metadata comes from the stage's metrics JSON.
"""
# No `from __future__ import annotations` here: Dagster inspects the real `context` annotation.

import base64
import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from muco.evaluation.promotion import headline_scores
from orchestration.dvc import REPO_ROOT, DvcError, DvcResource
from orchestration.stages import stage_code_version

OWNERS = ["team:muco"]
# Every asset that runs DVC shares one concurrency pool: the workspace admits one run at a time.
WORKSPACE_POOL = "dvc_workspace"

MetadataBuilder = Callable[[Path, Mapping[str, Any]], dict[str, Any]]
# (metrics of this run, metadata of the asset's previous materialisation or {}) -> results
CheckBuilder = Callable[[Mapping[str, Any], Mapping[str, Any]], list[AssetCheckResult]]


def dvc_stage_asset(
    *,
    name: str,
    stage: str,
    description: str,
    metadata: MetadataBuilder,
    deps: Sequence[str] = (),
    kinds: set[str] | None = None,
    group_name: str = "pipeline",
    check_specs: Sequence[AssetCheckSpec] = (),
    checks: CheckBuilder | None = None,
    metrics_file: str | None = None,
) -> AssetsDefinition:
    """An asset that materialises by ``dvc repro --single-item STAGE``.

    With ``checks``, a stage that exits non-zero *after writing its metrics during this run*
    (a data gate saying no) still yields its metadata and check results: the failed blocking
    check, not a crashed step, is what stops everything downstream. Any other failure raises.
    """
    metrics_path = metrics_file or f"metrics/{stage}.json"

    @asset(
        name=name,
        description=description,
        deps=list(deps),
        kinds={"dvc", *(kinds or set())},
        owners=OWNERS,
        group_name=group_name,
        code_version=stage_code_version(REPO_ROOT, stage),
        pool=WORKSPACE_POOL,
        tags={"dvc_stage": stage},
        check_specs=list(check_specs),
    )
    def _materialise(context: AssetExecutionContext, dvc: DvcResource) -> MaterializeResult:
        previous = _previous_metadata(context) if checks else {}
        started = time.time()
        try:
            dvc.repro(stage, context.log.info)
            version: str | None = dvc.data_version(stage)
        except DvcError:
            report = dvc.root / metrics_path
            if checks is None or not report.exists() or report.stat().st_mtime < started:
                raise
            context.log.warning(f"stage {stage} refused its data; see the asset checks")
            version = None
        metrics = dvc.read_json(metrics_path)
        return MaterializeResult(
            metadata={
                **metadata(dvc.root, metrics),
                "dvc_stage": stage,
                "dvc_outs_md5": version or "(stage failed: not recorded in dvc.lock)",
            },
            data_version=DataVersion(version) if version else None,
            check_results=checks(metrics, previous) if checks else None,
        )

    return _materialise


def _previous_metadata(context: AssetExecutionContext) -> dict[str, Any]:
    """Metadata values of the asset's latest materialisation, before this run records one."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def _markdown_table(counts: Mapping[str, int], key: str, value: str) -> MetadataValue:
    rows = [f"| {k} | {v:,} |" for k, v in counts.items()] or ["| (none) | 0 |"]
    return MetadataValue.md("\n".join([f"| {key} | {value} |", "|---|---:|", *rows]))


def image_pool_metadata(root: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Counts, rejects by reason and a contact sheet of thumbnails."""
    meta: dict[str, Any] = {
        "source": metrics["source"],
        "images": MetadataValue.int(metrics["images"]),
        "rejected": MetadataValue.int(metrics["rejected"]),
        "images_by_split": _markdown_table(metrics["images_by_split"], "split", "images"),
        "rejects_by_reason": _markdown_table(metrics["rejects_by_reason"], "reason", "inputs"),
        "stored_mb": MetadataValue.float(round(metrics["stored_bytes"] / 2**20, 3)),
        "manifest": MetadataValue.path(str(root / "data" / "images" / "manifest.parquet")),
    }
    preview = root / "data" / "images" / "preview.png"
    if preview.exists():
        encoded = base64.b64encode(preview.read_bytes()).decode()
        meta["thumbnails"] = MetadataValue.md(f"![thumbnails](data:image/png;base64,{encoded})")
    return meta


def m3t_records_metadata(root: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Records, turns, rejections by reason, throughput and a few sample records."""
    import duckdb

    from muco.records import connect

    meta: dict[str, Any] = {
        "images": MetadataValue.int(metrics["images"]),
        "records": MetadataValue.int(metrics["records"]),
        "turns": MetadataValue.int(metrics["turns"]),
        "rejected": MetadataValue.int(metrics["rejected"]),
        "rejections_by_reason": _markdown_table(
            metrics["rejections_by_reason"], "reason", "images"
        ),
        "records_path": MetadataValue.path(str(root / "data" / "m3t")),
    }
    timings = root / "metrics" / "timings" / "synthesize.json"
    if timings.exists():
        run = json.loads(timings.read_text(encoding="utf-8"))
        meta["generated"] = MetadataValue.int(run["generated"])
        meta["from_cache"] = MetadataValue.int(run["from_cache"])
        meta["generated_per_second"] = MetadataValue.float(run["generated_per_second"])
    if metrics["records"]:
        con = connect(root / "data" / "m3t", duckdb.connect())
        rows = con.execute(
            "SELECT t.record_id, t.turn, t.turn_type, t.queries[1], t.pos_text, t.neg_text "
            "FROM turns AS t WHERE t.record_id IN (SELECT record_id FROM records LIMIT 2) "
            "ORDER BY t.record_id, t.turn"
        ).fetchall()
        lines = [
            "| record | turn | type | query | target | hard negative |",
            "|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
        meta["sample_records"] = MetadataValue.md("\n".join(lines))
    return meta


def _cell(value: object) -> str:
    # Markdown table cells: one line, no pipes.
    return " ".join(str(value).split()).replace("|", "\\|")


def validated_records_metadata(root: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Counts, per-expectation failures, the gate verdict and where the data docs are."""
    failed = {n: e["failed"] for n, e in metrics["expectations"].items() if e["failed"]}
    return {
        "records": MetadataValue.int(metrics["records"]),
        "valid": MetadataValue.int(metrics["valid"]),
        "quarantined": MetadataValue.int(metrics["quarantined"]),
        "reject_rate": MetadataValue.float(metrics["reject_rate"]),
        "failed_by_expectation": _markdown_table(failed, "expectation", "records"),
        "gate_passed": MetadataValue.bool(metrics["gate"]["passed"]),
        "data_docs": MetadataValue.path(str(root / "reports" / "validation" / "index.html")),
        "quarantine": MetadataValue.path(str(root / "data" / "quarantine")),
    }


def embedding_model_metadata(root: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Losses, size, throughput and the loss curve as an image."""
    from muco.plots import line_chart_png

    meta: dict[str, Any] = {
        "final_loss": MetadataValue.float(metrics["final_loss"]),
        "first_loss": MetadataValue.float(metrics["first_loss"]),
        "steps": MetadataValue.int(metrics["steps"]),
        "trainable_parameters": MetadataValue.int(metrics["trainable_parameters"]),
        "model": MetadataValue.path(str(root / "models" / "muco")),
    }
    timings = root / "metrics" / "timings" / "train.json"
    if timings.exists():
        run = json.loads(timings.read_text(encoding="utf-8"))
        meta["pairs_per_s"] = MetadataValue.float(run["pairs_per_s"])
        meta["tokens_per_s"] = MetadataValue.float(run["tokens_per_s"])
    log = root / "metrics" / "train_log.csv"
    if log.exists():
        rows = list(csv.DictReader(log.read_text(encoding="utf-8").splitlines()))
        png = line_chart_png(
            [int(r["step"]) for r in rows],
            {"loss": [float(r["loss"]) for r in rows]},
            title="training loss",
            xlabel="step",
            ylabel="InfoNCE",
        )
        encoded = base64.b64encode(png).decode()
        meta["loss_curve"] = MetadataValue.md(f"![loss curve](data:image/png;base64,{encoded})")
    return meta


GATE_CHECK = "validation_gate"


def gate_check(metrics: Mapping[str, Any], previous: Mapping[str, Any]) -> list[AssetCheckResult]:
    """The blocking check: the same verdict and numbers as the validate stage's exit code.

    Only this run's metrics decide; ``previous`` is not consulted.
    """
    gate = metrics["gate"]
    failures = "\n".join(f"- {f}" for f in gate["failures"]) or "all thresholds met"
    return [
        AssetCheckResult(
            check_name=GATE_CHECK,
            passed=gate["passed"],
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "records": MetadataValue.int(metrics["records"]),
                "valid": MetadataValue.int(metrics["valid"]),
                "quarantined": MetadataValue.int(metrics["quarantined"]),
                "reject_rate": MetadataValue.float(metrics["reject_rate"]),
                "failures": MetadataValue.md(failures),
            },
        )
    ]


REGRESSION_CHECK = "no_regression"
# Points (of a percentage) a headline score may drop before the check warns; the environment
# overrides it, e.g. for noisy benchmarks.
REGRESSION_TOLERANCE = float(os.environ.get("MUCO_REGRESSION_TOLERANCE", "0.5"))


def benchmark_scores_metadata(root: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Summary tables against the baseline, per-dataset scores and the report's plots."""
    from muco.evaluation.report import summary_markdown_table

    baseline = metrics.get("baseline", {})
    meta: dict[str, Any] = {"headline": MetadataValue.json(headline_scores(metrics))}
    for benchmark, result in metrics.items():
        if benchmark == "baseline":
            continue
        reference = baseline.get(benchmark, {}).get("summary")
        meta[f"{benchmark}_summary"] = MetadataValue.md(
            summary_markdown_table(result["summary"], reference)
        )
        datasets = [f"| {name} | {value:.2f} |" for name, value in result["datasets"].items()]
        meta[f"{benchmark}_datasets"] = MetadataValue.md(
            "\n".join(["| dataset | score |", "|---|---:|", *datasets])
        )
        for chart in ("meta_tasks", "baseline"):
            png = root / "reports" / "eval" / benchmark / f"{chart}.png"
            if png.exists():
                encoded = base64.b64encode(png.read_bytes()).decode()
                meta[f"{benchmark}_{chart}_plot"] = MetadataValue.md(
                    f"![{benchmark} {chart}](data:image/png;base64,{encoded})"
                )
    meta["report"] = MetadataValue.path(str(root / "reports" / "eval"))
    return meta


def regression_check(
    metrics: Mapping[str, Any], previous: Mapping[str, Any]
) -> list[AssetCheckResult]:
    """Warn (never block) when a headline score fell against the previous materialisation."""
    current = headline_scores(metrics)
    before = previous.get("headline") or {}
    drops = {
        key: (before[key], value)
        for key, value in current.items()
        if key in before and value < before[key] - REGRESSION_TOLERANCE
    }
    if not before:
        verdict = "no previous materialisation to compare with"
    elif drops:
        verdict = "\n".join(
            f"- {key}: {old:.2f} -> {new:.2f} ({new - old:+.2f})"
            for key, (old, new) in drops.items()
        )
    else:
        verdict = f"no headline score fell by more than {REGRESSION_TOLERANCE} points"
    return [
        AssetCheckResult(
            check_name=REGRESSION_CHECK,
            passed=not drops,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "regressions": MetadataValue.int(len(drops)),
                "compared": MetadataValue.int(len(set(current) & set(before))),
                "details": MetadataValue.md(verdict),
            },
        )
    ]


def _check(
    name: str, passed: bool, severity: AssetCheckSeverity, verdict: str, **numbers: float
) -> list[AssetCheckResult]:
    metadata = {key: MetadataValue.float(float(value)) for key, value in numbers.items()}
    return [
        AssetCheckResult(
            check_name=name,
            passed=passed,
            severity=severity,
            metadata={**metadata, "verdict": MetadataValue.text(verdict)},
        )
    ]


# Share of inputs a stage may reject before its check warns.
REJECT_SHARE_LIMIT = 0.1


def pool_check(metrics: Mapping[str, Any], previous: Mapping[str, Any]) -> list[AssetCheckResult]:
    """The pool holds images, and few inputs were rejected (a broken source shows here first)."""
    images, rejected = metrics["images"], metrics["rejected"]
    share = rejected / max(1, images + rejected)
    passed = images > 0 and share <= REJECT_SHARE_LIMIT
    verdict = f"{images} images, {rejected} rejected ({share:.1%}; limit {REJECT_SHARE_LIMIT:.0%})"
    return _check("pool_health", passed, AssetCheckSeverity.WARN, verdict, reject_share=share)


def backbone_check(
    metrics: Mapping[str, Any], previous: Mapping[str, Any]
) -> list[AssetCheckResult]:
    """The backbone is a Qwen2-VL-family model the embedder supports, with parameters."""
    from muco.model.backbone import SUPPORTED_MODEL_TYPES

    passed = metrics["model_type"] in SUPPORTED_MODEL_TYPES and metrics["parameters"] > 0
    verdict = f"{metrics['model_type']} with {metrics['parameters']:,} parameters"
    return _check("supported_backbone", passed, AssetCheckSeverity.ERROR, verdict)


def synthesis_check(
    metrics: Mapping[str, Any], previous: Mapping[str, Any]
) -> list[AssetCheckResult]:
    """Most images became records: a generator whose outputs fail to parse shows here."""
    records, rejected = metrics["records"], metrics["rejected"]
    share = rejected / max(1, records + rejected)
    passed = records > 0 and share <= REJECT_SHARE_LIMIT
    verdict = f"{records} records, {rejected} images rejected ({share:.1%})"
    return _check("synthesis_yield", passed, AssetCheckSeverity.WARN, verdict, reject_share=share)


def training_check(
    metrics: Mapping[str, Any], previous: Mapping[str, Any]
) -> list[AssetCheckResult]:
    """Blocking: the loss is finite and fell; a diverged model is not worth evaluating."""
    first, final = metrics["first_loss"], metrics["final_loss"]
    passed = math.isfinite(final) and final < first
    verdict = f"loss {first:.4f} -> {final:.4f}"
    return _check(
        "loss_decreased", passed, AssetCheckSeverity.ERROR, verdict, first=first, final=final
    )


def backbone_metadata(root: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What was materialised and how large it is."""
    return {
        "source": metrics["source"],
        "model_type": metrics["model_type"],
        "parameters": MetadataValue.int(metrics["parameters"]),
        "hidden_size": MetadataValue.int(metrics["hidden_size"]),
        "layers": MetadataValue.int(metrics["layers"]),
        "tokenizer_size": MetadataValue.int(metrics["tokenizer_size"]),
        "path": MetadataValue.path(str(root / "models" / "backbone")),
    }


image_pool = dvc_stage_asset(
    name="image_pool",
    stage="images",
    description=(
        "Every image the pipeline may use: rendered scenes (default profile) or an ingested "
        "folder, tar shards or URL list, safely decoded and content-hashed (data/images)."
    ),
    metadata=image_pool_metadata,
    kinds={"parquet", "png"},
    check_specs=[AssetCheckSpec("pool_health", asset="image_pool", description="images, rejects")],
    checks=pool_check,
)

backbone = dvc_stage_asset(
    name="backbone",
    stage="backbone",
    description=(
        "The multimodal LLM the embedder is built on (models/backbone): the offline tiny "
        "Qwen2-VL, a local checkpoint or a hub download, loadable by from_pretrained."
    ),
    metadata=backbone_metadata,
    kinds={"pytorch", "safetensors"},
    check_specs=[
        AssetCheckSpec("supported_backbone", asset="backbone", description="Qwen2-VL family")
    ],
    checks=backbone_check,
)

m3t_records = dvc_stage_asset(
    name="m3t_records",
    stage="synthesize",
    description=(
        "M3T multi-turn records (data/m3t): seven query/target/hard-negative turns per image, "
        "generated from scene graphs, a local MLLM or an OpenAI-compatible server, cached by "
        "image hash and generator identity."
    ),
    metadata=m3t_records_metadata,
    deps=["image_pool"],
    kinds={"parquet", "duckdb"},
    check_specs=[
        AssetCheckSpec("synthesis_yield", asset="m3t_records", description="rejected images")
    ],
    checks=synthesis_check,
    metrics_file="metrics/synthesize.json",
)

validated_records = dvc_stage_asset(
    name="validated_records",
    stage="validate",
    description=(
        "Records that pass the Great Expectations suite (data/m3t_valid); failing ones are in "
        "data/quarantine with the expectations they failed. The blocking check is the gate."
    ),
    metadata=validated_records_metadata,
    deps=["m3t_records", "image_pool"],
    kinds={"parquet", "great_expectations"},
    check_specs=[
        AssetCheckSpec(
            GATE_CHECK,
            asset="validated_records",
            blocking=True,
            description="validate.max_reject_rate, min_records and per_expectation limits",
        )
    ],
    checks=gate_check,
    metrics_file="metrics/validation.json",
)

embedding_model = dvc_stage_asset(
    name="embedding_model",
    stage="train",
    description=(
        "The trained embedding model (models/muco): a merged Hugging Face Qwen2-VL directory "
        "with <|emb|>, trained with MuCo multi-turn contrastive learning on DeepSpeed."
    ),
    metadata=embedding_model_metadata,
    deps=["validated_records", "backbone", "image_pool"],
    kinds={"pytorch", "deepspeed", "safetensors"},
    check_specs=[
        AssetCheckSpec(
            "loss_decreased",
            asset="embedding_model",
            blocking=True,
            description="finite final loss below the first",
        )
    ],
    checks=training_check,
    metrics_file="metrics/train.json",
)

benchmark_scores = dvc_stage_asset(
    name="benchmark_scores",
    stage="evaluate",
    description=(
        "Scores of the trained model and of the untrained backbone on the configured "
        "benchmarks (scenes-bench, MMEB, M-BEIR): metrics/eval.json, reports/eval, and one run "
        "per model in the DuckDB results database (muco compare)."
    ),
    metadata=benchmark_scores_metadata,
    deps=["embedding_model", "backbone", "image_pool"],
    kinds={"duckdb", "markdown"},
    check_specs=[
        AssetCheckSpec(
            REGRESSION_CHECK,
            asset="benchmark_scores",
            blocking=False,
            description="warns when a headline score fell against the previous materialisation",
        )
    ],
    checks=regression_check,
    metrics_file="metrics/eval.json",
)
