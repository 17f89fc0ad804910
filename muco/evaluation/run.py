"""Evaluate one model on several benchmarks with one deduplicated encoding pass.

:func:`load_benchmark` turns a benchmark config into ranking tasks; :func:`evaluate` encodes the
union of every benchmark's inputs once (cached, see :mod:`muco.evaluation.encoding`) and scores
each dataset with :mod:`muco.evaluation.metrics`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from muco.config import Benchmark, MBEIRBenchmark, MMEBBenchmark, ScenesBenchmark
from muco.evaluation import mbeir, mmeb, scenes_bench
from muco.evaluation.encoding import EmbeddingCache, EncodeStats, ItemKeys, encode_items
from muco.evaluation.metrics import DatasetScore, score_task
from muco.evaluation.model_spec import ModelSpec
from muco.evaluation.tasks import RankingTask
from muco.model.embedder import Embedder

Summariser = Callable[[Sequence[DatasetScore]], dict[str, float | int]]


@dataclass(frozen=True)
class LoadedBenchmark:
    """A benchmark's tasks with its protocol version and its summary rule."""

    name: str
    protocol_version: str
    tasks: list[RankingTask]
    summarise: Summariser


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark scored: per-dataset scores, the summary and the data's hash."""

    name: str
    protocol_version: str
    data_hash: str
    scores: list[DatasetScore]
    summary: dict[str, float | int]


def load_benchmark(config: Benchmark) -> LoadedBenchmark:
    """Read the benchmark ``config`` describes (METHODS.md §6)."""
    if isinstance(config, ScenesBenchmark):
        tasks = scenes_bench.load_scenes_bench(
            config.data, config.splits, config.candidates, config.seed
        )
        return LoadedBenchmark(
            "scenes", scenes_bench.PROTOCOL_VERSION, tasks, scenes_bench.summarise_scenes
        )
    if isinstance(config, MMEBBenchmark):
        tasks = mmeb.load_mmeb(config.data, config.images, config.datasets)
        return LoadedBenchmark("mmeb", mmeb.PROTOCOL_VERSION, tasks, mmeb.summarise_mmeb)
    if isinstance(config, MBEIRBenchmark):
        tasks = mbeir.load_mbeir(config.data, config.pool, config.configurations)
        return LoadedBenchmark("mbeir", mbeir.PROTOCOL_VERSION, tasks, mbeir.summarise_mbeir)
    raise TypeError(f"unknown benchmark config {type(config).__name__}")


def evaluate(
    benchmarks: Sequence[LoadedBenchmark],
    spec: ModelSpec,
    *,
    cache: EmbeddingCache | None = None,
    embedder: Embedder | None = None,
    batch_size: int = 16,
    workers: int = 1,
) -> tuple[list[BenchmarkResult], EncodeStats]:
    """Score ``spec``'s model on every benchmark; each distinct input is encoded once."""
    keys = ItemKeys()
    items = [item for benchmark in benchmarks for task in benchmark.tasks for item in task.items()]
    embeddings, stats = encode_items(
        items,
        spec,
        cache=cache,
        embedder=embedder,
        batch_size=batch_size,
        workers=workers,
        keys=keys,
    )
    results = []
    for benchmark in benchmarks:
        scores = [
            score_task(task, embeddings.rows(task.queries), embeddings.rows(task.candidates))
            for task in benchmark.tasks
        ]
        results.append(
            BenchmarkResult(
                name=benchmark.name,
                protocol_version=benchmark.protocol_version,
                data_hash=tasks_hash(benchmark.tasks, keys),
                scores=scores,
                summary=benchmark.summarise(scores),
            )
        )
    return results, stats


def tasks_hash(tasks: Sequence[RankingTask], keys: ItemKeys) -> str:
    """sha256 of everything that defines the tasks: items by content, lists and positives."""
    digest = hashlib.sha256()
    for task in tasks:
        digest.update(f"{task.benchmark}\0{task.name}\0{task.meta_task}\0{task.group}\0".encode())
        for item in task.items():
            digest.update(keys.key(item).encode())
        for index in range(len(task.queries)):
            digest.update(task.ranked_indices(index).tobytes())
            digest.update(b"|" + task.positives[index].tobytes() + b";")
    return digest.hexdigest()


def primary_scores(result: BenchmarkResult) -> Mapping[str, float]:
    """``{"<group>/<dataset>": headline score}`` of a result, for metrics files."""
    return {f"{score.group}/{score.dataset}": score.score for score in result.scores}
