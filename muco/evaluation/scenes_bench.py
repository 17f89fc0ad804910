"""scenes-bench: MMEB's four meta-tasks on held-out rendered scenes (METHODS.md §6).

Built from an image pool of rendered scenes (``muco images`` with ``source.kind: scenes``): every
scene of a held-out split becomes one query per dataset, ranked like MMEB against its own list
of ``candidates`` (one positive, the rest negatives that are certainly wrong, because the scene
graph is known). The split ``test`` holds unseen images of seen attribute combinations;
``test_unseen`` shows, in every scene, a colour-shape pair that no training image shows, which
measures compositional generalisation.

Datasets (``RankingTask.name``) per meta-task:

- classification: ``Scenes-Object`` (the most prominent object: largest, then first in reading
  order), ``Scenes-Count`` (number of objects, as a word);
- VQA: ``Scenes-Colour`` / ``Scenes-Shape`` (of the object in a named cell), ``Scenes-Cell``
  (what is in a named cell: size, colour and shape);
- retrieval: ``Scenes-I2T`` (image → caption) and ``Scenes-T2I`` (caption → image);
- grounding: ``Scenes-Grounding`` (a referring expression plus the image → the crop showing
  that object, among crops of the other objects of the scene and of other scenes).

The instructions use the vocabulary of the M3T turns, so the benchmark measures generalisation
to unseen images and attribute combinations, not to unseen wordings. Crops lose absolute size
(each is resized to the model's input), so a grounding negative always differs from the target
in colour or shape. Label sets smaller than ``candidates`` (colours, shapes, counts) use all of
their values; chance levels are reported per dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from muco.evaluation.metrics import DatasetScore
from muco.evaluation.tasks import EvalItem, RankingTask, index_items
from muco.images import scenes
from muco.images.pool import read_manifest
from muco.images.scenes import Scene, SceneObject

BENCHMARK = "scenes"
# Bump when a dataset, an instruction or a candidate rule changes: results are not comparable.
PROTOCOL_VERSION = "scenes-bench-v1:hit@1:ties-against-positive"

META_TASKS: dict[str, str] = {
    "Scenes-Object": "classification",
    "Scenes-Count": "classification",
    "Scenes-Colour": "vqa",
    "Scenes-Shape": "vqa",
    "Scenes-Cell": "vqa",
    "Scenes-I2T": "retrieval",
    "Scenes-T2I": "retrieval",
    "Scenes-Grounding": "grounding",
}

# MMEB's placeholder: queries mark where the image goes, as MMEB's and M3T's texts do.
_IMAGE = "<|image_1|>\n"
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_RETRIEVAL_INSTRUCTION = "Find a caption for this image."
_CROP_INSTRUCTION = "Classify the most prominent object in this image."
# Pixels added around an object's box so the crop shows its outline whole.
_CROP_MARGIN = 2

Label = tuple[str, str, str]  # (size, colour, shape)


@dataclass(frozen=True)
class BenchScene:
    """One held-out scene: its graph, its image file and the image side in pixels."""

    scene: Scene
    image: str
    image_size: int


@dataclass(frozen=True)
class _Query:
    """One query before pooling: the query item, the positive and the negatives."""

    query: EvalItem
    positive: EvalItem
    negatives: tuple[EvalItem, ...]


def load_scenes_bench(
    pool_dir: Path,
    splits: Sequence[str] = ("test", "test_unseen"),
    candidates: int = 10,
    seed: int = 0,
) -> list[RankingTask]:
    """Every scenes-bench dataset for each of ``splits`` of the scene pool at ``pool_dir``."""
    if candidates < 2:
        raise ValueError(f"candidates must be at least 2, got {candidates}")
    by_split = read_bench_scenes(pool_dir, splits)
    tasks = []
    for split in splits:
        bench = by_split[split]
        for name, build in _BUILDERS.items():
            queries = [
                build(item, bench, candidates, _stream(seed, split, name, item.scene.scene_id))
                for item in bench
            ]
            tasks.append(_task(name, split, queries))
    return tasks


def read_bench_scenes(pool_dir: Path, splits: Sequence[str]) -> dict[str, list[BenchScene]]:
    """The scenes of ``splits`` in pool order, with absolute image paths.

    Errors name the pool and split when the pool holds no scenes for a split, and the file when
    a scene graph is missing.
    """
    pool_dir = Path(pool_dir).resolve()
    rows = read_manifest(pool_dir).select(["path", "split", "scene_graph"]).to_pylist()
    found: dict[str, list[BenchScene]] = {split: [] for split in splits}
    for row in rows:
        if row["split"] not in found:
            continue
        if not row["scene_graph"]:
            raise ValueError(f"{pool_dir}: image {row['path']} has no scene graph")
        graph_path = pool_dir / row["scene_graph"]
        if not graph_path.exists():
            raise FileNotFoundError(f"scene graph {graph_path} is missing")
        record = json.loads(graph_path.read_text(encoding="utf-8"))
        found[row["split"]].append(
            BenchScene(
                scene=scenes.scene_from_dict(record),
                image=str(pool_dir / row["path"]),
                image_size=int(record["image_size"]),
            )
        )
    for split, items in found.items():
        if len(items) < 2:
            raise ValueError(
                f"{pool_dir}: split {split!r} has {len(items)} scenes; scenes-bench needs at "
                "least 2 (build the pool with source.kind: scenes and that split)"
            )
    return found


def summarise_scenes(scores: Sequence[DatasetScore]) -> dict[str, float | int]:
    """Mean hit@1 and mean chance per split: overall and per meta-task (datasets weighted equally).

    Keys are ``"<split>/overall"``, ``"<split>/<meta_task>"`` and the same with ``"/chance"``
    appended, plus ``"<split>/datasets"``.
    """
    summary: dict[str, float | int] = {}
    for split in dict.fromkeys(score.group for score in scores):
        in_split = [score for score in scores if score.group == split]
        summary[f"{split}/datasets"] = len(in_split)
        _add_mean(summary, f"{split}/overall", in_split)
        for meta_task in dict.fromkeys(score.meta_task for score in in_split):
            _add_mean(
                summary,
                f"{split}/{meta_task}",
                [score for score in in_split if score.meta_task == meta_task],
            )
    return summary


def _add_mean(summary: dict[str, float | int], key: str, scores: Sequence[DatasetScore]) -> None:
    summary[key] = float(np.mean([score.score for score in scores]))
    summary[f"{key}/chance"] = float(np.mean([score.chance for score in scores]))


# --- building blocks -----------------------------------------------------------------------------


def _stream(seed: int, split: str, dataset: str, scene_id: str) -> np.random.Generator:
    # A stable hash (Python's hash() is salted per process) keeps the benchmark reproducible.
    digest = hashlib.sha256(f"{split}\0{dataset}\0{scene_id}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big")])


def _task(name: str, split: str, queries: Sequence[_Query]) -> RankingTask:
    pool, position = index_items(
        [item for query in queries for item in (query.positive, *query.negatives)]
    )
    lists = tuple(
        np.array([position[item] for item in (query.positive, *query.negatives)], dtype=np.int64)
        for query in queries
    )
    return RankingTask(
        benchmark=BENCHMARK,
        name=name,
        meta_task=META_TASKS[name],
        group=split,
        queries=tuple(query.query for query in queries),
        candidates=pool,
        candidate_lists=lists,
        positives=tuple(listed[:1] for listed in lists),
    )


def _label(obj: SceneObject) -> Label:
    return (obj.size, obj.colour, obj.shape)


def _label_text(label: Label) -> str:
    return " ".join(label)


def _reading_order(scene: Scene) -> list[SceneObject]:
    return sorted(scene.objects, key=lambda obj: (obj.row, obj.col))


def _allowed_labels(split: str) -> list[Label]:
    """Every label a scene of ``split`` may show: held-out pairs only in ``test_unseen``."""
    held_out = scenes.held_out_pairs()
    return [
        (size, colour, shape)
        for size, colour, shape in product(scenes.SIZES, scenes.COLOURS, scenes.SHAPES)
        if split == "test_unseen" or (colour, shape) not in held_out
    ]


def _sample(rng: np.random.Generator, options: Sequence[str], count: int) -> list[str]:
    """Up to ``count`` distinct options in random order (all of them when there are fewer)."""
    distinct = list(dict.fromkeys(options))
    chosen = rng.choice(len(distinct), size=min(count, len(distinct)), replace=False)
    return [distinct[int(index)] for index in chosen]


def _text_query(
    image: str,
    question: str,
    answer: str,
    wrong: Iterable[str],
    candidates: int,
    rng: np.random.Generator,
) -> _Query:
    negatives = _sample(rng, [text for text in wrong if text != answer], candidates - 1)
    return _Query(
        query=EvalItem(text=_IMAGE + question, image=image),
        positive=EvalItem(text=answer),
        negatives=tuple(EvalItem(text=text) for text in negatives),
    )


def _pick(rng: np.random.Generator, options: Sequence[SceneObject]) -> SceneObject:
    return options[int(rng.integers(len(options)))]


# --- the datasets --------------------------------------------------------------------------------


def _object(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    ordered = _reading_order(item.scene)
    # max() keeps the first of equals: ties go to the earliest object in reading order.
    prominent = max(ordered, key=lambda obj: scenes.SIZES[obj.size])
    present = {_label(obj) for obj in item.scene.objects}
    wrong = [
        _label_text(label) for label in _allowed_labels(item.scene.split) if label not in present
    ]
    question = "Classify the most prominent object in this image."
    return _text_query(item.image, question, _label_text(_label(prominent)), wrong, candidates, rng)


def _count(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    answer = NUMBER_WORDS[len(item.scene.objects) - 1]
    question = "How many objects are in this image?"
    return _text_query(item.image, question, answer, NUMBER_WORDS, candidates, rng)


def _colour(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    target = _pick(rng, item.scene.objects)
    question = f"What colour is the {target.shape} in the {target.cell} cell?"
    return _text_query(item.image, question, target.colour, scenes.COLOURS, candidates, rng)


def _shape(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    target = _pick(rng, item.scene.objects)
    question = f"Which shape is in the {target.cell} cell?"
    return _text_query(item.image, question, target.shape, scenes.SHAPES, candidates, rng)


def _cell(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    target = _pick(rng, item.scene.objects)
    answer = _label_text(_label(target))
    # The other objects of the scene are the hardest negatives: only the cell tells them apart.
    others = [_label_text(_label(obj)) for obj in item.scene.objects if obj is not target]
    hard = _sample(rng, [text for text in others if text != answer], candidates - 1)
    rest = [_label_text(label) for label in _allowed_labels(item.scene.split)]
    easy = [text for text in rest if text != answer and text not in hard]
    question = f"What is in the {target.cell} cell?"
    wrong = [*hard, *_sample(rng, easy, candidates - 1 - len(hard))]
    return _Query(
        query=EvalItem(text=_IMAGE + question, image=item.image),
        positive=EvalItem(text=answer),
        negatives=tuple(EvalItem(text=text) for text in wrong),
    )


def caption(scene: Scene) -> str:
    """A caption naming the background and every object with its cell, in reading order."""
    objects = [
        f"a {_label_text(_label(obj))} in the {obj.cell} cell" for obj in _reading_order(scene)
    ]
    listed = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
    return f"A {scene.background} background with {listed}."


def _other_scenes(
    item: BenchScene, bench: Sequence[BenchScene], count: int, rng: np.random.Generator
) -> list[BenchScene]:
    """``count`` other scenes of the split whose captions differ from ``item``'s."""
    own = caption(item.scene)
    others = [other for other in bench if other is not item and caption(other.scene) != own]
    chosen = rng.choice(len(others), size=min(count, len(others)), replace=False)
    return [others[int(index)] for index in chosen]


def _image_to_text(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    others = _other_scenes(item, bench, candidates - 1, rng)
    return _Query(
        query=EvalItem(text=_IMAGE + _RETRIEVAL_INSTRUCTION, image=item.image),
        positive=EvalItem(text=caption(item.scene)),
        negatives=tuple(EvalItem(text=caption(other.scene)) for other in others),
    )


def _text_to_image(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    others = _other_scenes(item, bench, candidates - 1, rng)
    return _Query(
        query=EvalItem(text=caption(item.scene)),
        positive=EvalItem(text=_IMAGE + _RETRIEVAL_INSTRUCTION, image=item.image),
        negatives=tuple(
            EvalItem(text=_IMAGE + _RETRIEVAL_INSTRUCTION, image=other.image) for other in others
        ),
    )


def crop_box(obj: SceneObject, image_size: int) -> tuple[int, int, int, int]:
    """The grounding crop of ``obj``: its pixel box plus a small margin, inside the image."""
    left, top, right, bottom = scenes.object_bbox(obj, image_size)
    return (
        max(0, left - _CROP_MARGIN),
        max(0, top - _CROP_MARGIN),
        min(image_size, right + _CROP_MARGIN),
        min(image_size, bottom + _CROP_MARGIN),
    )


def _crop(item: BenchScene, obj: SceneObject) -> EvalItem:
    box = crop_box(obj, item.image_size)
    return EvalItem(text=_IMAGE + _CROP_INSTRUCTION, image=item.image, box=box)


def _grounding(
    item: BenchScene, bench: Sequence[BenchScene], candidates: int, rng: np.random.Generator
) -> _Query:
    def distinct(obj: SceneObject, target: SceneObject) -> bool:
        return (obj.colour, obj.shape) != (target.colour, target.shape)

    # A target whose label is unique in its scene needs no cell to be referred to unambiguously.
    labels = [_label(obj) for obj in item.scene.objects]
    unique = [obj for obj in item.scene.objects if labels.count(_label(obj)) == 1]
    target = _pick(rng, unique or list(item.scene.objects))
    where = "in this image" if unique else f"in the {target.cell} cell"
    same_scene = [obj for obj in item.scene.objects if distinct(obj, target)]
    crops = [_crop(item, obj) for obj in same_scene][: candidates - 1]
    elsewhere = [
        (other, obj)
        for other in bench
        if other is not item
        for obj in other.scene.objects
        if distinct(obj, target)
    ]
    wanted = min(candidates - 1 - len(crops), len(elsewhere))
    chosen = rng.choice(len(elsewhere), size=wanted, replace=False)
    crops += [_crop(*elsewhere[int(index)]) for index in chosen]
    question = f"Find the {_label_text(_label(target))} {where}."
    return _Query(
        query=EvalItem(text=_IMAGE + question, image=item.image),
        positive=_crop(item, target),
        negatives=tuple(crops),
    )


_Builder = Callable[[BenchScene, Sequence[BenchScene], int, np.random.Generator], _Query]
_BUILDERS: dict[str, _Builder] = {
    "Scenes-Object": _object,
    "Scenes-Count": _count,
    "Scenes-Colour": _colour,
    "Scenes-Shape": _shape,
    "Scenes-Cell": _cell,
    "Scenes-I2T": _image_to_text,
    "Scenes-T2I": _text_to_image,
    "Scenes-Grounding": _grounding,
}
