"""The ``muco`` command: one subcommand per pipeline stage plus utilities.

Each stage subcommand is the same ``main()`` that DVC runs as ``python -m muco.stages.<stage>``,
so a stage behaves identically by hand, under ``dvc repro`` and from Dagster.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with main(argv, prog), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "images": ("muco.stages.images", "build the image pool (stage images)"),
    "backbone": ("muco.stages.backbone", "materialise the backbone (stage backbone)"),
    "synthesize": ("muco.stages.synthesize", "M3T records from the image pool (stage synthesize)"),
    "validate": ("muco.stages.validate", "the data gate before training (stage validate)"),
    "train": ("muco.stages.train", "train the embedding model (stage train)"),
    "evaluate": ("muco.stages.evaluate", "score a model on scenes-bench, MMEB, M-BEIR"),
    "embed": ("muco.stages.embed", "embed texts / images with a model: muco embed --model DIR"),
    "inspect": ("muco.inspection", "describe records: muco inspect records DIR"),
    "summary": ("muco.summary", "print what the pipeline has produced so far"),
    "compare": ("muco.evaluation.compare", "two evaluation runs side by side: muco compare A B"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muco",
        description="Universal multimodal embeddings: synthesis, validation, training, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``muco COMMAND [ARGS...]`` to the command's own ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the "invalid choice" error and exits
        return 2
    module_name, _ = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    return module.main(argv[1:], prog=f"muco {argv[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
