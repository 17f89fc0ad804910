"""DVC stage ``train``: the embedding model (``models/muco``) from validated records.

Run as one process, or as several under torchrun / the deepspeed launcher (each process runs
this same main; only rank 0 writes outputs). Writes the merged Hugging Face model directory,
``metrics/train.json`` (final loss, steps, throughput) and ``metrics/train_log.csv`` (one row
per logged step, for ``dvc plots``). Checkpoints go to ``--checkpoints/<run key>``; rerunning
the stage after an interruption resumes from the newest complete one, and a change of params,
records, backbone or training code starts a fresh run (see :func:`run_key`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import muco
from muco.config import Params, load_params, params_hash
from muco.io import atomic_write_json, atomic_write_text
from muco.stages import run_stage
from muco.training.export import export_model, training_readout
from muco.training.launch import relaunch
from muco.training.loop import train

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "pairs_per_s", "tokens_per_s")
# The code that decides what a training step computes, relative to the muco package: the
# train stage's code dependencies in dvc.yaml, less the stage main itself.
TRAINING_CODE = ("training", "model", "config.py")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/m3t_valid"), help="records")
    parser.add_argument("--images", type=Path, default=Path("data/images"), help="image root")
    parser.add_argument("--backbone", type=Path, default=Path("models/backbone"))
    parser.add_argument("--out", type=Path, default=Path("models/muco"))
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints/muco"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("metrics/train_log.csv"),
        help="per-step loss, lr, grad norm and throughput (CSV)",
    )
    parser.add_argument(
        "--tensorboard",
        type=Path,
        default=Path("metrics/tensorboard/train"),
        help="TensorBoard event files (not a DVC output)",
    )
    parser.add_argument(
        "--timings",
        type=Path,
        default=Path("metrics/timings/train.json"),
        help="throughput of this run (not a DVC output)",
    )


def training_code_digest(package: Path = Path(muco.__file__).parent) -> str:
    """sha256 over the Python sources of :data:`TRAINING_CODE` under ``package`` (names and
    bytes, in sorted order)."""
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        path = package / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(f"{file.relative_to(package).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def run_key(params: Params, data: Path, backbone: Path, code: str | None = None) -> str:
    """What a checkpoint may be resumed by: the same train and backbone params, the same
    records (file bytes), the same backbone files (names and sizes; hashing a 7B model's
    bytes on every run would cost minutes) and the same training code (``code``, by default
    :func:`training_code_digest`). Anything else starts from scratch: resuming a finished
    run after the loss changed would otherwise hand back the old model as the new one."""
    digest = hashlib.sha256()
    digest.update((code if code is not None else training_code_digest()).encode())
    digest.update(params_hash(params.train).encode())
    digest.update(params_hash(params.backbone).encode())
    for shard in sorted(Path(data).glob("*.parquet")):
        digest.update(shard.name.encode() + shard.read_bytes())
    for file in sorted(Path(backbone).rglob("*")):
        if file.is_file():
            digest.update(f"{file.relative_to(backbone)}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _log_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: entry[k] for k in LOG_FIELDS} for entry in history)
    return buffer.getvalue()


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    code = relaunch(params.train.distributed, "muco.stages.train", args.argv)
    if code is not None:
        return code

    def show(entry: dict) -> None:
        print(
            f"step {entry['step']:>5}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  "
            f"pairs/s {entry['pairs_per_s']:.1f}",
            file=sys.stderr,
            flush=True,
        )

    embedder, report = train(
        params.train,
        params.backbone,
        args.data,
        args.images,
        args.backbone,
        args.checkpoints / run_key(params, args.data, args.backbone),
        log=show,
        tensorboard_dir=args.tensorboard,
        progress=sys.stderr.isatty(),
    )
    import deepspeed  # train() chose the accelerator before DeepSpeed was first imported

    # Under ZeRO-3 each rank holds a slice of every weight: all ranks gather them (a
    # collective), then rank 0 writes the merged model.
    with deepspeed.zero.GatheredParameters(
        list(embedder.backbone.model.parameters()),
        enabled=params.train.deepspeed.zero_stage == 3,
    ):
        if torch.distributed.get_rank() == 0:
            export_model(
                embedder,
                args.out,
                provenance={"stage": "train", "params_sha256": params_hash(params.train)},
                readout=training_readout(params.train),
            )
    if torch.distributed.get_rank() != 0:
        return 0
    atomic_write_text(args.history, _log_csv(report.history))
    atomic_write_json(
        args.metrics,
        {
            "steps": params.train.total_steps,
            "final_loss": round(report.final_loss, 6),
            "first_loss": round(report.history[0]["loss"], 6) if report.history else None,
            "trainable_parameters": report.trainable_parameters,
            "total_parameters": report.total_parameters,
            "stages": params.train.methods,
        },
    )
    atomic_write_json(
        args.timings,
        {
            "seconds": round(report.seconds, 3),
            "steps_run": report.steps,
            "resumed_from": report.resumed_from,
            "pairs_per_s": round(report.pairs / max(report.seconds, 1e-9), 3),
            "tokens_per_s": round(report.tokens / max(report.seconds, 1e-9), 3),
        },
    )
    print(
        f"train: {report.steps} steps (resumed from {report.resumed_from}), final loss "
        f"{report.final_loss:.4f}, {report.pairs / max(report.seconds, 1e-9):.1f} pairs/s; "
        f"model in {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "muco train") -> int:
    """Entry point of ``muco train`` and ``python -m muco.stages.train``."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run(args: argparse.Namespace) -> int:
        args.argv = argv  # a launcher re-executes the stage with exactly these arguments
        return _run(args)

    return run_stage(__doc__ or "", _configure, run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
