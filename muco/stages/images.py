"""DVC stage ``images``: build the image pool (``data/images``) and ``metrics/images.json``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from muco.config import load_params
from muco.images.pool import build_pool
from muco.io import atomic_write_json
from muco.stages import run_stage


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/images"), help="pool directory")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/images.json"))


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    summary = build_pool(params.images, args.out, progress=sys.stderr.isatty())
    atomic_write_json(args.metrics, summary.metrics())
    rejects = ", ".join(f"{r}={n}" for r, n in sorted(summary.rejects_by_reason.items())) or "none"
    print(
        f"images: {summary.images} images from {summary.source} in {args.out} "
        f"({dict(sorted(summary.images_by_split.items()))}); rejected {summary.rejected} "
        f"({rejects}); {summary.seconds:.1f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "muco images") -> int:
    """Entry point of ``muco images`` and ``python -m muco.stages.images``."""
    return run_stage(__doc__ or "", _configure, _run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
