"""DVC stage ``validate``: the data gate between synthesis and training.

Writes passing records to ``--out``, failing records (with the expectations they failed) to
``--quarantine``, per-expectation pass rates and the gate verdict to ``--report``, and Great
Expectations data docs (HTML) to ``--docs``. Exits 1 when the gate fails, after writing all of
them, so ``dvc repro`` stops before training and the evidence is there to read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from muco.config import load_params
from muco.io import atomic_directory, atomic_write_json
from muco.stages import run_stage
from muco.validation.run import validate_records

EXIT_GATE_FAILED = 1


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--records",
        type=Path,
        default=Path("data/m3t"),
        help="record shards, or a public M3T parquet file",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=Path("data/images"),
        help="the root that records' image paths are relative to",
    )
    parser.add_argument("--out", type=Path, default=Path("data/m3t_valid"))
    parser.add_argument("--quarantine", type=Path, default=Path("data/quarantine"))
    parser.add_argument("--report", type=Path, default=Path("metrics/validation.json"))
    parser.add_argument(
        "--docs",
        type=Path,
        default=Path("reports/validation"),
        help="Great Expectations data docs (HTML)",
    )


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    with (
        atomic_directory(args.out) as out,
        atomic_directory(args.quarantine) as quarantine,
        atomic_directory(args.docs) as docs,
    ):
        report = validate_records(
            args.records,
            args.images,
            out,
            quarantine,
            params.validate_,
            params.images.limits,
            docs_dir=docs,
            shard_size=params.synthesize.shard_size,
        )
    atomic_write_json(args.report, report.metrics())
    failing = {n: c for n, c in sorted(report.failed_by_expectation.items()) if c}
    print(
        f"validate: {report.valid} of {report.records} records valid, {report.quarantined} "
        f"quarantined ({failing or 'none'}); data docs in {args.docs / 'index.html'}"
    )
    if not report.gate.passed:
        print("validate: GATE FAILED", file=sys.stderr)
        for failure in report.gate.failures:
            print(f"  - {failure}", file=sys.stderr)
        return EXIT_GATE_FAILED
    print("validate: gate passed")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "muco validate") -> int:
    """Entry point of ``muco validate`` and ``python -m muco.stages.validate``."""
    return run_stage(__doc__ or "", _configure, _run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
