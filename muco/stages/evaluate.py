"""DVC stage ``evaluate`` and ``muco evaluate``: score a model on MMEB, M-BEIR or scenes-bench.

Without ``--benchmark`` the benchmarks of ``params.yaml`` (``evaluate.benchmarks``) are scored;
with ``--benchmark {scenes,mmeb,mbeir} --data DIR`` one benchmark read from ``DIR`` is, so any
checkpoint the Embedder loads (a released MuCo model, a stock Qwen2-VL) is scored without
training. ``--baseline`` scores a second model (the untrained backbone) on the same data for
the report's comparison. Every input is embedded once per model, through the embedding cache
(``--cache``, default ``$MUCO_EMBEDDING_CACHE`` or ``.cache/embeddings``).

Outputs: ``--out`` (``metrics/eval.json``: the summaries and per-dataset scores, numbers only,
for ``dvc metrics``), a markdown report with plots per benchmark under ``--report``, one run per
benchmark and model in the results database (``--results``, default ``$MUCO_RESULTS_DB`` or
``results/eval.duckdb``, read by ``muco compare``), and encoding throughput under
``--timings`` (not a DVC output: wall-clock time would make the metrics irreproducible).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from muco.config import (
    Benchmark,
    ConfigError,
    MBEIRBenchmark,
    MMEBBenchmark,
    Params,
    ScenesBenchmark,
    load_params,
)
from muco.evaluation.encoding import EmbeddingCache, EncodeStats
from muco.evaluation.model_spec import ModelSpec
from muco.evaluation.report import write_report
from muco.evaluation.run import BenchmarkResult, evaluate, load_benchmark, primary_scores
from muco.evaluation.store import RunInfo, record_run
from muco.io import atomic_write_json
from muco.stages import run_stage


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument(
        "--benchmark",
        choices=("scenes", "mmeb", "mbeir"),
        help="score one benchmark read from --data instead of params.yaml's list",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="with --benchmark: the scene pool, the MMEB dataset folders or the M-BEIR root",
    )
    parser.add_argument("--images", type=Path, help="with --benchmark mmeb: the image root")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--baseline", help="a second model to score and compare against")
    parser.add_argument("--report", type=Path, help="folder for the markdown report and plots")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(os.environ.get("MUCO_RESULTS_DB", "results/eval.duckdb")),
        help="results database that keeps every run (DuckDB)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("MUCO_EMBEDDING_CACHE", ".cache/embeddings")),
        help="embedding cache root",
    )
    parser.add_argument("--no-cache", action="store_true", help="encode without the cache")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MUCO_EVAL_WORKERS", "1")),
        help="encoding processes (one GPU each where there are enough)",
    )
    parser.add_argument("--batch-size", type=int, help="default: evaluate.batch_size")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: GPU if any)")
    parser.add_argument("--label", help="a name for the run in the results database")
    parser.add_argument(
        "--timings",
        type=Path,
        default=Path("metrics/timings/evaluate.json"),
        help="encoding throughput of this run (not a DVC output)",
    )


def benchmarks_from_args(args: argparse.Namespace, params: Params) -> list[Benchmark]:
    """params.yaml's benchmarks, or the one ``--benchmark``/``--data`` describe."""
    if args.benchmark is None:
        if args.data is not None or args.images is not None:
            raise ConfigError("--data and --images need --benchmark")
        return list(params.evaluate.benchmarks)
    if args.data is None:
        raise ConfigError(f"--benchmark {args.benchmark} needs --data")
    if not args.data.exists():
        raise FileNotFoundError(f"--data: {args.data} does not exist")
    if args.benchmark == "scenes":
        return [ScenesBenchmark(data=args.data)]
    if args.benchmark == "mmeb":
        if args.images is None:
            raise ConfigError("--benchmark mmeb needs --images (the image-tasks/ root)")
        return [MMEBBenchmark(kind="mmeb", data=args.data, images=args.images)]
    return [MBEIRBenchmark(kind="mbeir", data=args.data)]


def _spec(model: str, params: Params, device: str) -> ModelSpec:
    backbone = params.backbone
    return ModelSpec(
        model=model,
        min_pixels=backbone.min_pixels,
        max_pixels=backbone.max_pixels,
        dtype=backbone.dtype,
        attn_implementation=backbone.attn_implementation,
        device=device,
    )


def _score_model(
    spec: ModelSpec, benchmarks: list, args: argparse.Namespace, batch_size: int
) -> tuple[list[BenchmarkResult], EncodeStats]:
    cache = None if args.no_cache else EmbeddingCache.for_model(args.cache, spec.fingerprint())
    return evaluate(benchmarks, spec, cache=cache, batch_size=batch_size, workers=args.workers)


def _record(
    args: argparse.Namespace,
    spec: ModelSpec,
    results: list[BenchmarkResult],
    settings: dict[str, Any],
    label: str | None,
) -> list[RunInfo]:
    runs = []
    fingerprint = spec.fingerprint()
    for result in results:
        run = RunInfo.new(
            model=spec.model,
            model_fingerprint=fingerprint,
            benchmark=result.name,
            protocol_version=result.protocol_version,
            data_hash=result.data_hash,
            settings=settings,
            label=label,
        )
        record_run(args.results, run, result.scores, result.summary)
        runs.append(run)
    return runs


def _metrics(results: list[BenchmarkResult]) -> dict[str, Any]:
    return {
        result.name: {"summary": result.summary, "datasets": primary_scores(result)}
        for result in results
    }


def _timings(stats: EncodeStats) -> dict[str, float | int]:
    return {
        "inputs": stats.inputs,
        "unique_inputs": stats.unique,
        "cache_hits": stats.cache_hits,
        "encoded": stats.encoded,
        "batches": stats.batches,
        "seconds": round(stats.seconds, 3),
        "inputs_per_s": round(stats.inputs_per_second, 1),
    }


def _print_summary(label: str, results: list[BenchmarkResult]) -> None:
    for result in results:
        headline = {
            key: value
            for key, value in result.summary.items()
            if key.endswith("overall") or key == "overall"
        }
        text = ", ".join(f"{key} {value:.1f}" for key, value in headline.items())
        print(f"evaluate: {label} {result.name}: {text}")


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.workers < 1:
        raise ConfigError(f"--workers must be positive, got {args.workers}")
    batch_size = args.batch_size or params.evaluate.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    # Benchmarks first: a missing dataset should not cost a model load.
    benchmarks = [load_benchmark(config) for config in benchmarks_from_args(args, params)]
    models = [("model", args.model, args.label)]
    if args.baseline:
        models.append(("baseline", args.baseline, "baseline"))
    metrics: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    reports: dict[str, tuple[RunInfo, BenchmarkResult]] = {}
    for role, model, label in models:
        spec = _spec(model, params, args.device)
        results, stats = _score_model(spec, benchmarks, args, batch_size)
        settings = {**spec.settings(), "batch_size": batch_size, "workers": args.workers}
        runs = _record(args, spec, results, settings, label)
        metrics[role] = _metrics(results)
        timings[role] = _timings(stats)
        _print_summary(role, results)
        for run, result in zip(runs, results, strict=True):
            reports[f"{role}/{result.name}"] = (run, result)
    atomic_write_json(args.out, metrics["model"] | {"baseline": metrics.get("baseline", {})})
    atomic_write_json(args.timings, timings)
    if args.report is not None:
        _write_reports(args.report, reports, [benchmark.name for benchmark in benchmarks])
    print(f"evaluate: metrics in {args.out}, runs in {args.results}", file=sys.stderr)
    return 0


def _write_reports(
    root: Path, reports: dict[str, tuple[RunInfo, BenchmarkResult]], names: Sequence[str]
) -> None:
    for name in names:
        run, result = reports[f"model/{name}"]
        baseline = reports.get(f"baseline/{name}")
        write_report(
            root / name,
            run,
            result.scores,
            result.summary,
            None if baseline is None else (baseline[0], baseline[1].scores, baseline[1].summary),
        )


def main(argv: Sequence[str] | None = None, prog: str = "muco evaluate") -> int:
    """Entry point of ``muco evaluate`` and ``python -m muco.stages.evaluate``."""
    return run_stage(__doc__ or "", _configure, _run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
