"""One model's embeddings in float32 and in bfloat16: how far apart they are, and how fast.

A model trained in bf16 (the reference set-up, METHODS.md §1) is often served in bf16 too; this
loads the same checkpoint twice through :meth:`Embedder.from_pretrained`, once per dtype, encodes
the same inputs (texts, images, and images with text) and reports the cosine between each pair
of rows, whether every bf16 value is finite, and the encoding seconds of each dtype.

    .venv/bin/python benchmarks/embed_precision.py --model models/muco --images data/images

``--images`` is searched recursively for PNG files (the first ``--count`` in name order; a
scene pool's ``preview.png`` is skipped). Results go to
``benchmarks/results/embed_precision.json``. On a GPU the model runs there (``--device``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muco.model.embedder import Embedder, EmbedInput

REPO = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")


def benchmark_inputs(images: list[Path]) -> list[EmbedInput]:
    """One text per image, the images alone, and half of them with a question: every kind."""
    texts = [EmbedInput(text=f"a scene with {n} objects") for n in range(1, len(images) + 1)]
    with_text = [
        EmbedInput(text="What is in the picture?", image=p) for p in images[: len(images) // 2]
    ]
    return [*texts, *(EmbedInput(image=p) for p in images), *with_text]


def encode_in(
    model: Path, dtype: str, items: list[EmbedInput], device: str, pixels: dict[str, int]
) -> tuple[np.ndarray, float]:
    """``(N, D)`` float32 embeddings of ``items`` by ``model`` loaded in ``dtype``; seconds."""
    embedder = Embedder.from_pretrained(model, dtype=dtype, **pixels)
    embedder.backbone.model.to(device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    synchronize()
    started = time.perf_counter()
    embeddings = embedder.encode(items, batch_size=8)
    synchronize()
    return embeddings, time.perf_counter() - started


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Row-wise cosine between two ``(N, D)`` embedding matrices of L2-normalised rows."""
    cosine = (reference * other).sum(axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    )
    return {
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "finite": bool(np.isfinite(other).all()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--images", type=Path, required=True, help="folder searched for *.png")
    parser.add_argument("--count", type=int, default=8, help="images to embed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/embed_precision.json"
    )
    args = parser.parse_args(argv)
    images = [p for p in sorted(args.images.rglob("*.png")) if p.name != "preview.png"]
    if not images:
        parser.error(f"--images: no PNG files under {args.images}")
    items = benchmark_inputs(images[: args.count])
    pixels = {
        key: value
        for key, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels))
        if value is not None
    }
    embeddings, seconds = {}, {}
    for dtype in DTYPES:
        embeddings[dtype], seconds[dtype] = encode_in(args.model, dtype, items, args.device, pixels)
    result = {
        "model": str(args.model),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "inputs": len(items),
        "dimension": int(embeddings["float32"].shape[1]),
        "seconds": {dtype: round(value, 3) for dtype, value in seconds.items()},
        **compare(embeddings["float32"], embeddings["bfloat16"]),
        "command": " ".join(
            ["benchmarks/embed_precision.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    print(
        f"{result['inputs']} inputs, D = {result['dimension']}, on {result['device']}: cosine "
        f"fp32 vs bf16 min {result['cosine_min']:.5f}, mean {result['cosine_mean']:.5f}; bf16 "
        f"finite: {result['finite']}; seconds fp32 {seconds['float32']:.2f}, "
        f"bf16 {seconds['bfloat16']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
