"""``muco embed``: embed texts and images with a model, written as a float32 ``.npy`` (N, D).

Inputs, in this order: each ``--text`` (text only), each ``--image`` (image only), then each
line of ``--inputs`` (JSON ``{"text": ..., "image": ...}``; image paths are relative to the
file's folder unless absolute). Row i of the output is the i-th input (METHODS.md §1 embedding,
single-turn template).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from muco.config import BackboneConfig, ConfigError
from muco.io import atomic_write_bytes
from muco.model.embedder import Embedder, EmbedInput
from muco.stages import run_stage

_JSONL_KEYS = frozenset({"text", "image"})


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--text", action="append", default=[], help="a text to embed (repeat)")
    parser.add_argument(
        "--image", action="append", default=[], type=Path, help="an image to embed (repeat)"
    )
    parser.add_argument("--inputs", type=Path, help='JSON lines of {"text": ..., "image": ...}')
    parser.add_argument("--out", type=Path, required=True, help="output .npy, float32 (N, D)")
    parser.add_argument("--batch-size", type=int, default=16)
    # The pixel limits change scores (METHODS.md §1); the defaults are the backbone config's.
    parser.add_argument("--min-pixels", type=int, default=BackboneConfig().min_pixels)
    parser.add_argument("--max-pixels", type=int, default=BackboneConfig().max_pixels)


def read_jsonl_inputs(path: Path) -> list[EmbedInput]:
    """Items of a JSON-lines file; a bad line raises ``ConfigError`` naming file and line.

    A missing image raises ``FileNotFoundError`` naming the line too. Blank lines are skipped.
    """
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not record.keys() <= _JSONL_KEYS:
            raise ConfigError(f'{where}: expected an object with keys "text" and/or "image"')
        text, image = record.get("text"), record.get("image")
        if not isinstance(text, str | None) or not isinstance(image, str | None):
            raise ConfigError(f'{where}: "text" and "image" must be strings')
        if not text and not image:
            raise ConfigError(f"{where}: neither text nor image")
        image_path = None if not image else path.parent / image  # an absolute image stays as is
        if image_path is not None and not image_path.is_file():
            raise FileNotFoundError(f"{where}: image not found: {image_path}")
        items.append(EmbedInput(text=text, image=image_path))
    if not items:
        raise ConfigError(f"{path}: no inputs")
    return items


def _items(args: argparse.Namespace) -> list[EmbedInput]:
    items = [EmbedInput(text=text) for text in args.text]
    for image in args.image:
        if not image.is_file():
            raise FileNotFoundError(f"--image: image not found: {image}")
        items.append(EmbedInput(image=image))
    if args.inputs is not None:
        if not args.inputs.is_file():
            raise FileNotFoundError(f"--inputs: file not found: {args.inputs}")
        items.extend(read_jsonl_inputs(args.inputs))
    if not items:
        raise ConfigError("no inputs: give --text, --image or --inputs")
    return items


def _run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    # Inputs first: a typo in a line should not cost a model load.
    items = _items(args)
    embedder = Embedder.from_pretrained(
        args.model, min_pixels=args.min_pixels, max_pixels=args.max_pixels
    )
    embeddings = embedder.encode(items, batch_size=args.batch_size)
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"embed: {embeddings.shape} {embeddings.dtype} embeddings to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "muco embed") -> int:
    """Entry point of ``muco embed`` and ``python -m muco.stages.embed``."""
    return run_stage(__doc__ or "", _configure, _run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
