"""DVC stage ``backbone``: materialise the configured backbone as ``models/backbone``.

``tiny`` builds the offline backbone; a local checkpoint is linked in; a hub id is downloaded.
Later stages load ``models/backbone`` through the one ``from_pretrained`` path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from transformers.utils import logging as hf_logging

from muco.config import load_params
from muco.io import atomic_write_json
from muco.model.backbone import load_backbone_from_config, prepare_backbone
from muco.model.tiny import read_pretraining
from muco.stages import run_stage


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("models/backbone"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/backbone.json"))


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    # Per-shard progress bars of a model this size are noise in DVC and Dagster logs.
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    prepare_backbone(params.backbone, args.out)
    # Load it back through the same path training uses: a backbone that cannot load fails here.
    backbone = load_backbone_from_config(args.out, params.backbone)
    config = backbone.model.config
    metrics = {
        "source": params.backbone.source,
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
        "hidden_size": config.text_config.hidden_size,
        "layers": config.text_config.num_hidden_layers,
        "tokenizer_size": len(backbone.processor.tokenizer),
    }
    for kind, report in read_pretraining(args.out).items():
        metrics[kind] = {
            key: report[key] for key in ("steps", "scenes", "final_loss", "validation_accuracy")
        }
    atomic_write_json(args.metrics, metrics)
    print(
        f"backbone: {metrics['model_type']} from {metrics['source']} with "
        f"{metrics['parameters']:,} parameters in {args.out} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "muco backbone") -> int:
    """Entry point of ``muco backbone`` and ``python -m muco.stages.backbone``."""
    return run_stage(__doc__ or "", _configure, _run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
