"""Linear probes on a model's visual tokens: does the vision tower encode each object?

For every cell of the scene grid and every object attribute (colour, shape, size), a ridge
classifier reads the attribute of the object in that cell from the concatenated visual tokens
(the vision tower and merger's output, ``(tokens, hidden)`` per image, before the language
model). It is fitted on the scene pool's ``train`` split and scored on ``test``, over the scenes
that have an object in that cell; the table gives the mean accuracy over cells beside the
majority-class rate of the same test rows.

The ``position`` column asks a different question of single tokens: fitted on one token at a
time, can a ridge classifier tell which place in the token grid the token came from? Qwen2-VL's
tower has no absolute position embedding and the language model's M-RoPE barely separates the
columns of a small grid, so a language model can find "the top left cell" only if the token's
content says where it is (its chance rate is one over the number of tokens).

It separates two reasons a model can fail scenes-bench's object-level tasks: the visual tokens
do not carry the attribute (the probe stays at the majority rate), or they carry it and the
language model does not read it out (the probe is high, the benchmark low). Comparing a trained
model with its untrained backbone shows whether training changed the vision tower at all.

    .venv/bin/python benchmarks/visual_probe.py models/backbone models/muco

It needs the default profile's scene pool (``data/images``; ``make run`` builds it). Results go
to ``benchmarks/results/visual_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from muco.evaluation.scenes_bench import BenchScene, read_bench_scenes
from muco.images import scenes
from muco.model.embedder import Embedder

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ("colour", "shape", "size")
FIT_SPLIT, SCORE_SPLIT = "train", "test"


def ridge_probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, l2: float
) -> float:
    """Accuracy on ``test`` of a one-vs-rest ridge classifier fitted on ``train``.

    ``*_x``: (N, F) features, standardised with the training rows' mean and deviation;
    ``*_y``: (N,) integer classes. The classifier regresses one-hot targets with an L2 penalty
    ``l2`` and predicts the arg-max; classes absent from ``train`` are never predicted.
    """
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("the probe needs at least one training and one test row")
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
    classes = np.unique(train_y)
    targets = (train_y[:, None] == classes[None, :]).astype(np.float64)
    gram = train_z.T @ train_z + l2 * np.eye(train_z.shape[1])
    weights = np.linalg.solve(gram, train_z.T @ targets)
    predicted = classes[(test_z @ weights).argmax(axis=1)]
    return float((predicted == test_y).mean())


def majority_rate(labels: np.ndarray) -> float:
    """The share of the most frequent class in ``labels`` (N,)."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / len(labels))


def cell_labels(items: Sequence[BenchScene], attribute: str) -> dict[str, list[str | None]]:
    """Per cell name, the attribute of the object in that cell for each scene (None: empty)."""
    labels: dict[str, list[str | None]] = {name: [] for name in scenes.CELL_NAMES.values()}
    for item in items:
        by_cell = {obj.cell: getattr(obj, attribute) for obj in item.scene.objects}
        for name, column in labels.items():
            column.append(by_cell.get(name))
    return labels


def visual_tokens(embedder: Embedder, items: Sequence[BenchScene], batch: int = 50) -> np.ndarray:
    """``(N, tokens, hidden)``: each image's visual tokens in grid order (row-major)."""
    model = embedder.backbone.model.model
    processor = embedder.backbone.processor.image_processor
    rows = []
    for start in range(0, len(items), batch):
        images = [Image.open(item.image).convert("RGB") for item in items[start : start + batch]]
        inputs = processor(images=images, return_tensors="pt")
        with torch.no_grad():
            out = model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
            )
        rows.extend(tokens.float().numpy() for tokens in out.pooler_output)
    return np.stack(rows)


def position_probe(fit_tokens: np.ndarray, score_tokens: np.ndarray, l2: float) -> dict[str, float]:
    """How well single tokens tell their own place in the grid.

    ``*_tokens``: ``(N, tokens, hidden)``; every token is one row labelled with its index in
    the grid. Returns the accuracy and the chance rate (one over the token count), in percent.
    """
    count, hidden = fit_tokens.shape[1:]
    accuracy = ridge_probe_accuracy(
        fit_tokens.reshape(-1, hidden),
        np.tile(np.arange(count), len(fit_tokens)),
        score_tokens.reshape(-1, hidden),
        np.tile(np.arange(count), len(score_tokens)),
        l2,
    )
    return {"accuracy": round(100 * accuracy, 1), "majority": round(100 / count, 1)}


def probe_model(
    model_dir: str, pool: dict[str, list[BenchScene]], min_pixels: int, max_pixels: int, l2: float
) -> dict[str, dict[str, float]]:
    """Per attribute, the probe's mean test accuracy over cells and the majority rate; under
    ``position``, the single-token position probe and its chance rate."""
    embedder = Embedder.from_pretrained(model_dir, min_pixels=min_pixels, max_pixels=max_pixels)
    embedder.backbone.model.eval()
    tokens = {split: visual_tokens(embedder, pool[split]) for split in (FIT_SPLIT, SCORE_SPLIT)}
    features = {split: grid.reshape(len(grid), -1) for split, grid in tokens.items()}
    result: dict[str, dict[str, float]] = {}
    for attribute in ATTRIBUTES:
        fit = cell_labels(pool[FIT_SPLIT], attribute)
        score = cell_labels(pool[SCORE_SPLIT], attribute)
        accuracies, majorities = [], []
        for cell in fit:
            train_rows = [i for i, label in enumerate(fit[cell]) if label is not None]
            test_rows = [i for i, label in enumerate(score[cell]) if label is not None]
            if not train_rows or not test_rows:
                continue
            train_y = np.array([fit[cell][i] for i in train_rows])
            test_y = np.array([score[cell][i] for i in test_rows])
            accuracies.append(
                ridge_probe_accuracy(
                    features[FIT_SPLIT][train_rows],
                    train_y,
                    features[SCORE_SPLIT][test_rows],
                    test_y,
                    l2,
                )
            )
            majorities.append(majority_rate(test_y))
        result[attribute] = {
            "accuracy": round(100 * float(np.mean(accuracies)), 1),
            "majority": round(100 * float(np.mean(majorities)), 1),
            "cells": len(accuracies),
        }
    result["position"] = position_probe(tokens[FIT_SPLIT], tokens[SCORE_SPLIT], l2)
    return result


def print_table(result: dict[str, dict[str, dict[str, float]]]) -> None:
    """One line per model: probe accuracy (%) per attribute and for the token's position,
    majority (chance) rate in brackets."""
    columns = (*ATTRIBUTES, "position")
    print(f"{'model':<40} " + " ".join(f"{name:>14}" for name in columns))
    for model, scores in result.items():
        cells = " ".join(
            f"{scores[a]['accuracy']:>6.1f} ({scores[a]['majority']:>4.1f})" for a in columns
        )
        print(f"{model:<40} {cells}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model directories the Embedder loads")
    parser.add_argument("--pool", type=Path, default=REPO / "data" / "images")
    parser.add_argument("--min-pixels", type=int, default=56 * 56)
    parser.add_argument("--max-pixels", type=int, default=112 * 112)
    parser.add_argument("--l2", type=float, default=100.0, help="ridge penalty")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "visual_probe.json"
    )
    args = parser.parse_args(argv)
    pool = read_bench_scenes(args.pool, [FIT_SPLIT, SCORE_SPLIT])
    result = {
        model: probe_model(model, pool, args.min_pixels, args.max_pixels, args.l2)
        for model in args.models
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join([".venv/bin/python", "benchmarks/visual_probe.py", *sys.argv[1:]]),
        "settings": {
            "pool": str(args.pool),
            "fit_split": FIT_SPLIT,
            "score_split": SCORE_SPLIT,
            "min_pixels": args.min_pixels,
            "max_pixels": args.max_pixels,
            "l2": args.l2,
        },
        "models": result,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
