"""DVC stage ``synthesize``: M3T records from the image pool (``data/m3t``).

Writes ``part-NNNNN.parquet`` shards, ``rejections.parquet`` (one row per image that produced no
record, with the reason) and ``provenance.json``; ``metrics/synthesize.json`` holds the counts
and ``metrics/timings/synthesize.json`` the run-specific throughput and cache use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from muco.config import load_params
from muco.io import atomic_write_json
from muco.stages import run_stage
from muco.synthesis.cache import default_cache_dir
from muco.synthesis.generators import build_generator
from muco.synthesis.runner import synthesize


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=Path("data/images"), help="image pool")
    parser.add_argument("--out", type=Path, default=Path("data/m3t"), help="records directory")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/synthesize.json"))
    parser.add_argument(
        "--timings",
        type=Path,
        default=Path("metrics/timings/synthesize.json"),
        help="throughput and cache use of this run (not a DVC output)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="synthesis cache (default: $MUCO_CACHE_DIR/synthesis or .cache/muco/synthesis)",
    )


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    generator = build_generator(params.synthesize, params.backbone)
    report = synthesize(
        args.images,
        args.out,
        params.synthesize,
        generator,
        args.cache_dir or default_cache_dir(),
        progress=sys.stderr.isatty(),
    )
    atomic_write_json(args.metrics, report.metrics())
    atomic_write_json(args.timings, report.timings())
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(report.rejections_by_reason.items()))
    print(
        f"synthesize: {report.records} records ({report.turns} turns) from {report.images} "
        f"images in {args.out}; rejected {report.rejected} ({reasons or 'none'}); "
        f"{report.from_cache} from cache, {report.generated} generated in {report.seconds:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "muco synthesize") -> int:
    """Entry point of ``muco synthesize`` and ``python -m muco.stages.synthesize``."""
    return run_stage(__doc__ or "", _configure, _run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
