"""Evaluation encoding throughput: naive per-query encoding against deduplicated, cached encoding.

MMEB ranks every query against its own candidate list, and the lists repeat themselves: a
classification dataset lists the same label texts for every query, a text-to-image dataset draws
its candidates from one shared pool of images. Encoding every (query, candidate) input as listed
runs the model on the same input over and over; :func:`muco.evaluation.encoding.encode_items`
runs it once per distinct input across all datasets and keeps the result in an on-disk cache.

The benchmark builds a small MMEB-shaped fixture (four datasets named as real MMEB datasets,
written in the public parquet layout, with images from the scene renderer), reads it with
:func:`muco.evaluation.mmeb.load_mmeb`, and encodes the same requested inputs (every query
followed by its candidate list, as listed) three ways with one loaded model:

- ``naive``: :meth:`Embedder.encode` on each dataset's listed inputs, no dedup, no cache;
- ``dedup_cold``: one :func:`encode_items` call over all datasets, with an empty cache;
- ``dedup_warm``: the same call again, now served from the cache.

Model inputs and forward batches are counted at the model's boundary, by wrapping the
embedder's ``forward_embeddings`` (a spy that counts the rows and calls that reach it), not
taken from the encoder's own statistics. The script stops with an error unless the cold run's
model inputs equal the number of distinct inputs, the warm run makes no model call, and the
naive and deduplicated runs give the same embedding for every requested input (allclose 1e-4).

    .venv/bin/python benchmarks/eval_throughput.py                # tiny backbone of params.yaml
    .venv/bin/python benchmarks/eval_throughput.py --model DIR    # another checkpoint

Results go to ``benchmarks/results/eval_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from muco.config import load_params
from muco.evaluation.encoding import EmbeddingCache, ItemKeys, encode_items, to_embed_input
from muco.evaluation.mmeb import load_mmeb
from muco.evaluation.model_spec import ModelSpec
from muco.evaluation.tasks import EvalItem, RankingTask
from muco.images.scenes import (
    BACKGROUNDS,
    CELL_NAMES,
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    describe_object,
    generate_scene,
    png_bytes,
    render_scene,
)
from muco.model.backbone import prepare_backbone
from muco.model.embedder import Embedder

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4

Row = dict[str, Any]

# The public files' column types (original variant: the instruction is part of qry_text).
_SCHEMA = pa.schema(
    [
        pa.field("qry_text", pa.string()),
        pa.field("qry_img_path", pa.string()),
        pa.field("tgt_text", pa.list_(pa.string())),
        pa.field("tgt_img_path", pa.list_(pa.string())),
    ]
)

# Label and answer vocabularies of the scene world: what the candidate lists draw from.
LABELS = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)  # 64 labels
ANSWERS = (
    *SHAPES,
    *COLOURS,
    *SIZES,
    *BACKGROUNDS,
    *CELL_NAMES.values(),
    *(str(count) for count in range(1, 10)),
)  # 41 answers


# --------------------------------------------------------------------------- fixture


@dataclass(frozen=True)
class FixtureDataset:
    """One fixture dataset: a real MMEB name (so load_mmeb files it) and its sizes.

    ``queries`` is multiplied by ``--scale``; ``candidates`` is each query's list length,
    positive first, drawn from the dataset's vocabulary (labels, answers) or pool (images,
    captions; at least ``RETRIEVAL_POOL``, and one per query so every query has its own
    positive).
    """

    name: str
    kind: str  # a key of ROW_BUILDERS
    queries: int
    candidates: int


# Scaled down from MMEB (1000 queries x 1000 candidates per dataset) so the naive run stays
# around a minute on a 2-core CPU, keeping its shape: label lists cover most of a small
# vocabulary, retrieval lists draw from a pool shared by all queries.
FIXTURE = (
    FixtureDataset("ImageNet_1K", "classification", queries=20, candidates=50),
    FixtureDataset("OK-VQA", "vqa", queries=20, candidates=20),
    FixtureDataset("MSCOCO_t2i", "t2i", queries=20, candidates=10),
    FixtureDataset("MSCOCO_i2t", "i2t", queries=20, candidates=10),
)
RETRIEVAL_POOL = 30


def caption(scene: Scene) -> str:
    """A caption naming every object of ``scene`` and its background."""
    objects = ", ".join(describe_object(obj) for obj in scene.objects)
    return f"A {objects} on a {scene.background} background."


def question_and_answer(scene: Scene, index: int) -> tuple[str, str]:
    """One of three question kinds about ``scene`` (by ``index``), and its answer."""
    first = scene.objects[0]
    kind = index % 3
    if kind == 0:
        return f"What shape is in the {first.cell} cell?", first.shape
    if kind == 1:
        return f"What colour is the {first.shape}?", first.colour
    return "How many objects are there?", str(len(scene.objects))


def candidate_list(
    positive: str, pool: Sequence[str], size: int, rng: np.random.Generator
) -> list[str]:
    """``positive``, then ``size - 1`` other entries of ``pool`` drawn without repeats."""
    others = [entry for entry in pool if entry != positive]
    picked = rng.choice(len(others), size=min(size - 1, len(others)), replace=False)
    return [positive, *(others[int(index)] for index in picked)]


def write_images(images: Path, dataset: str, scenes: Sequence[Scene], image_size: int) -> list[str]:
    """Render ``scenes`` into ``images/dataset/``; their paths relative to ``images``."""
    folder = images / dataset
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for scene in scenes:
        (folder / f"{scene.scene_id}.png").write_bytes(png_bytes(render_scene(scene, image_size)))
        paths.append(f"{dataset}/{scene.scene_id}.png")
    return paths


def classification_row(
    index: int, scenes: Sequence[Scene], paths: Sequence[str], size: int, rng: np.random.Generator
) -> Row:
    """An image query against label texts; the positive names the scene's first object."""
    first = scenes[index].objects[0]
    labels = candidate_list(f"{first.colour} {first.shape}", LABELS, size, rng)
    query = "<|image_1|>\nRepresent the given image for classification"
    return _row(query, paths[index], labels, [""] * len(labels))


def vqa_row(
    index: int, scenes: Sequence[Scene], paths: Sequence[str], size: int, rng: np.random.Generator
) -> Row:
    """An image and a question against answer texts."""
    question, answer = question_and_answer(scenes[index], index)
    answers = candidate_list(answer, ANSWERS, size, rng)
    query = f"<|image_1|>\nRepresent the given image with the following question: {question}"
    return _row(query, paths[index], answers, [""] * len(answers))


def t2i_row(
    index: int, scenes: Sequence[Scene], paths: Sequence[str], size: int, rng: np.random.Generator
) -> Row:
    """A caption against images of the pool every query draws from."""
    listed = candidate_list(paths[index], paths, size, rng)
    query = f"Find me an everyday image that matches the given caption: {caption(scenes[index])}"
    return _row(query, "", ["<|image_1|>\nRepresent the given image."] * len(listed), listed)


def i2t_row(
    index: int, scenes: Sequence[Scene], paths: Sequence[str], size: int, rng: np.random.Generator
) -> Row:
    """An image against captions of the pool every query draws from."""
    pool = [caption(scene) for scene in scenes]
    captions = candidate_list(pool[index], pool, size, rng)
    query = "<|image_1|>\nFind an image caption describing the given everyday image."
    return _row(query, paths[index], captions, [""] * len(captions))


ROW_BUILDERS = {
    "classification": classification_row,
    "vqa": vqa_row,
    "t2i": t2i_row,
    "i2t": i2t_row,
}


def dataset_rows(
    spec: FixtureDataset, queries: int, images: Path, image_size: int, seed: int
) -> list[Row]:
    """The test split of one fixture dataset, with the texts MMEB's original variant uses.

    Query ``i`` is about scene ``i``; retrieval datasets render a larger pool of scenes, whose
    images (t2i) or captions (i2t) every query's candidates are drawn from.
    """
    rng = np.random.default_rng([seed, 1])
    pool = max(RETRIEVAL_POOL, queries) if spec.kind in ("t2i", "i2t") else queries
    scenes = [generate_scene(seed, "test", index) for index in range(pool)]
    paths = write_images(images, spec.name, scenes, image_size)
    build = ROW_BUILDERS[spec.kind]
    return [build(index, scenes, paths, spec.candidates, rng) for index in range(queries)]


def _row(query: str, image: str, texts: list[str], paths: list[str]) -> Row:
    return {"qry_text": query, "qry_img_path": image, "tgt_text": texts, "tgt_img_path": paths}


def build_fixture(root: Path, scale: float, image_size: int) -> dict[str, int]:
    """Write the fixture's ``data/`` (hub parquet layout) and ``images/`` under ``root``.

    Returns each dataset's query count after scaling.
    """
    counts = {}
    for seed, spec in enumerate(FIXTURE):
        queries = max(1, round(spec.queries * scale))
        rows = dataset_rows(spec, queries, root / "images", image_size, seed)
        folder = root / "data" / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=_SCHEMA)
        pq.write_table(table, folder / "test-00000-of-00001.parquet")
        counts[spec.name] = queries
    return counts


def listed_items(task: RankingTask) -> list[EvalItem]:
    """Every input ``task`` asks for, as listed: each query, then its candidate list."""
    items: list[EvalItem] = []
    for index, query in enumerate(task.queries):
        items.append(query)
        items.extend(task.candidates[int(position)] for position in task.ranked_indices(index))
    return items


# --------------------------------------------------------------------------- measurement


class ForwardSpy:
    """Counts the calls to one embedder's ``forward_embeddings`` and the rows they embed.

    The embedder's bound method is wrapped on the instance, so every path that reaches the
    model through it (``Embedder.encode``, :func:`encode_items`) is counted, and nothing else
    changes.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.batches = 0
        self.inputs = 0
        forward: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] = embedder.forward_embeddings

        def counted(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
            self.batches += 1
            self.inputs += int(batch["input_ids"].shape[0])
            return forward(batch)

        embedder.forward_embeddings = counted  # type: ignore[method-assign]

    def counts(self) -> tuple[int, int]:
        """(model inputs, forward batches) so far."""
        return self.inputs, self.batches


def measured(
    mode: str, spy: ForwardSpy, requested: int, run: Callable[[], np.ndarray]
) -> tuple[Row, np.ndarray]:
    """Run ``run`` once; its row of the table (counted at the spy) and its embeddings."""
    inputs_before, batches_before = spy.counts()
    started = time.perf_counter()
    embeddings = run()
    seconds = time.perf_counter() - started
    inputs, batches = spy.counts()
    row = {
        "mode": mode,
        "inputs": requested,
        "model_inputs": inputs - inputs_before,
        "batches": batches - batches_before,
        "seconds": round(seconds, 3),
        "inputs_per_s": round(requested / seconds, 1),
    }
    return row, embeddings


def encode_naive(
    embedder: Embedder, per_task: Sequence[Sequence[EvalItem]], batch_size: int
) -> np.ndarray:
    """Each dataset's listed inputs encoded as they are, one dataset after another."""
    return np.concatenate(
        [
            embedder.encode([to_embed_input(item) for item in items], batch_size)
            for items in per_task
        ]
    )


def encode_dedup(
    embedder: Embedder,
    spec: ModelSpec,
    items: Sequence[EvalItem],
    cache: EmbeddingCache,
    batch_size: int,
) -> np.ndarray:
    """One :func:`encode_items` call over every dataset's inputs; a row per requested input."""
    embeddings, _ = encode_items(items, spec, cache=cache, embedder=embedder, batch_size=batch_size)
    return embeddings.rows(items)


def check(
    rows: Sequence[Row], unique: int, naive: np.ndarray, cold: np.ndarray, warm: np.ndarray
) -> float:
    """Stop with a message unless the invariants hold; the largest naive/dedup difference."""
    naive_row, cold_row, warm_row = rows
    if naive_row["model_inputs"] != naive_row["inputs"]:
        raise SystemExit(
            f"naive run embedded {naive_row['model_inputs']} inputs, "
            f"not the {naive_row['inputs']} requested"
        )
    if cold_row["model_inputs"] != unique:
        raise SystemExit(
            f"cold-cache run embedded {cold_row['model_inputs']} inputs, "
            f"not the {unique} distinct ones"
        )
    if warm_row["model_inputs"] != 0:
        raise SystemExit(f"warm-cache run embedded {warm_row['model_inputs']} inputs, not 0")
    difference = float(np.abs(naive - cold).max())
    if not np.allclose(naive, cold, atol=ATOL, rtol=0):
        raise SystemExit(f"naive and deduplicated embeddings differ by up to {difference:.2e}")
    if not np.array_equal(warm, cold):
        raise SystemExit("the warm cache returned embeddings other than those it stored")
    return difference


# --------------------------------------------------------------------------- report


def model_spec(args: argparse.Namespace, root: Path) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec of ``--model``, or of params.yaml's backbone built under ``root``; its settings.

    Pixel limits, dtype and attention come from params.yaml's backbone section either way.
    """
    backbone = load_params(REPO / "params.yaml").backbone
    if args.model is None:
        directory = prepare_backbone(backbone, root / "backbone")
        described = {"source": "tiny (params.yaml)", **backbone.tiny.model_dump(mode="json")}
    else:
        directory = args.model
        described = {"source": str(args.model)}
    spec = ModelSpec(
        str(directory),
        min_pixels=backbone.min_pixels,
        max_pixels=backbone.max_pixels,
        dtype=backbone.dtype,
        attn_implementation=backbone.attn_implementation,
        device=args.device,
    )
    settings = {key: value for key, value in spec.settings().items() if key != "model"}
    return spec, {**described, **settings}


def warm_up(embedder: Embedder, items: Sequence[EvalItem]) -> None:
    """One text and one image input through the model, so lazy initialisation is not timed."""
    texts = [item for item in items if item.image is None][:1]
    pictures = [item for item in items if item.image is not None][:1]
    embedder.encode([to_embed_input(item) for item in [*texts, *pictures]])


def run_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Build the fixture and the model under ``root``, run the three modes, check, report."""
    queries = build_fixture(root, args.scale, args.image_size)
    tasks = load_mmeb(root / "data", root / "images", [spec.name for spec in FIXTURE])
    spec, model = model_spec(args, root)
    embedder = spec.load()
    per_task = [listed_items(task) for task in tasks]
    items = [item for listed in per_task for item in listed]
    # Distinct by content, as the encoder keys them: its cold run must embed exactly these.
    unique = len(set(map(ItemKeys().key, items)))
    warm_up(embedder, items)
    spy = ForwardSpy(embedder)
    # Hashing the model's files is outside the timings: a run does it once, whatever it encodes.
    cache = EmbeddingCache.for_model(root / "cache", spec.fingerprint())
    batch = args.batch_size
    naive_row, naive = measured(
        "naive", spy, len(items), lambda: encode_naive(embedder, per_task, batch)
    )
    cold_row, cold = measured(
        "dedup_cold", spy, len(items), lambda: encode_dedup(embedder, spec, items, cache, batch)
    )
    warm_row, warm = measured(
        "dedup_warm", spy, len(items), lambda: encode_dedup(embedder, spec, items, cache, batch)
    )
    rows = [naive_row, cold_row, warm_row]
    difference = check(rows, unique, naive, cold, warm)
    for row in rows:
        row["speed_up"] = round(naive_row["seconds"] / row["seconds"], 1)
    device = spec.resolved_device()
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": device,
            "device_name": torch.cuda.get_device_name(device) if device != "cpu" else "cpu",
        },
        "settings": {
            "scale": args.scale,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "model": model,
        },
        "datasets": [
            {
                "name": task.name,
                "meta_task": task.meta_task,
                "queries": queries[task.name],
                "candidates_per_query": task.list_size(0),
                "distinct_candidates": len(task.candidates),
                "listed_inputs": len(listed),
            }
            for task, listed in zip(tasks, per_task, strict=True)
        ],
        "unique_inputs": unique,
        "rows": rows,
        "max_abs_difference": difference,
    }


def print_table(result: dict[str, Any]) -> None:
    """The datasets, then one line per mode and the speed-ups over the naive run."""
    machine, settings = result["machine"], result["settings"]
    print(
        f"model {settings['model']['source']} on {machine['device_name']} "
        f"({machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads); "
        f"batch size {settings['batch_size']}, images {settings['image_size']} px"
    )
    print(f"{'dataset':<12} {'queries':>7} {'list':>5} {'distinct':>8} {'inputs':>7}")
    for dataset in result["datasets"]:
        print(
            f"{dataset['name']:<12} {dataset['queries']:>7} {dataset['candidates_per_query']:>5} "
            f"{dataset['distinct_candidates']:>8} {dataset['listed_inputs']:>7}"
        )
    print(
        f"{'mode':<12} {'inputs':>7} {'model inputs':>12} {'batches':>7} {'seconds':>8} "
        f"{'inputs/s':>10} {'speed-up':>8}"
    )
    for row in result["rows"]:
        print(
            f"{row['mode']:<12} {row['inputs']:>7} {row['model_inputs']:>12} {row['batches']:>7} "
            f"{row['seconds']:>8.2f} {row['inputs_per_s']:>10.1f} "
            f"{row['speed_up']:>7.1f}x"
        )
    print(
        f"unique inputs {result['unique_inputs']}; naive and deduplicated embeddings agree to "
        f"{result['max_abs_difference']:.1e} (limit {ATOL:.0e})"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every query count")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--image-size", type=int, default=112, help="scene side in pixels")
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint directory (default: tiny backbone)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "eval_throughput.json",
        help="result JSON",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.model is not None and not args.model.is_dir():
        parser.error(f"--model: not a directory: {args.model}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    with tempfile.TemporaryDirectory(prefix="muco-eval-throughput-") as folder:
        result = run_benchmark(args, Path(folder))
    command = shlex.join([".venv/bin/python", "benchmarks/eval_throughput.py", *arguments])
    result = {"command": command, **result}
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
