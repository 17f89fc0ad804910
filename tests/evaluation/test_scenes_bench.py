"""scenes-bench: every positive is right by the scene graph, every negative is wrong."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from muco.evaluation import scenes_bench
from muco.evaluation.metrics import DatasetScore
from muco.evaluation.scenes_bench import caption, crop_box, load_scenes_bench, read_bench_scenes
from muco.evaluation.tasks import EvalItem, RankingTask
from muco.images import scenes
from muco.images.scenes import Scene

SPLITS = ("test", "test_unseen")


@pytest.fixture(scope="module")
def bench(scene_pool: Path) -> dict[tuple[str, str], RankingTask]:
    return {(task.group, task.name): task for task in load_scenes_bench(scene_pool, SPLITS)}


@pytest.fixture(scope="module")
def scene_of(scene_pool: Path) -> dict[str, Scene]:
    by_split = read_bench_scenes(scene_pool, SPLITS)
    return {item.image: item.scene for items in by_split.values() for item in items}


def _listed(task: RankingTask, query: int) -> list[EvalItem]:
    return [task.candidates[index] for index in task.ranked_indices(query)]


def _object_in(scene: Scene, cell: str) -> scenes.SceneObject:
    return next(obj for obj in scene.objects if obj.cell == cell)


def test_every_dataset_of_every_split_with_one_query_per_scene(bench: dict) -> None:
    assert set(bench) == {(split, name) for split in SPLITS for name in scenes_bench.META_TASKS}
    for (_, name), task in bench.items():
        assert len(task.queries) == 12
        assert task.meta_task == scenes_bench.META_TASKS[name]
        assert all(
            positive.tolist() == [listed[0]]
            for positive, listed in zip(task.positives, task.candidate_lists, strict=True)
        )
        vocabulary = {"Scenes-Count": 9, "Scenes-Colour": 8, "Scenes-Shape": 8}.get(name, 10)
        for query in range(len(task.queries)):
            listed = _listed(task, query)
            assert len(listed) == min(10, vocabulary), name
            assert len(set(listed)) == len(listed), f"{name}: a candidate is listed twice"


def test_text_answers_follow_the_scene_graph(bench: dict, scene_of: dict) -> None:
    for split in SPLITS:
        for query, item in enumerate(bench[split, "Scenes-Colour"].queries):
            shape, cell = re.search(r"the (\w+) in the ([\w ]+) cell", item.text).groups()
            target = _object_in(scene_of[item.image], cell)
            listed = _listed(bench[split, "Scenes-Colour"], query)
            assert (target.shape, listed[0].text) == (shape, target.colour)
        for query, item in enumerate(bench[split, "Scenes-Cell"].queries):
            cell = re.search(r"in the ([\w ]+) cell", item.text).group(1)
            listed = _listed(bench[split, "Scenes-Cell"], query)
            assert listed[0].text == scenes.describe_object(_object_in(scene_of[item.image], cell))
            assert listed[0].text not in {c.text for c in listed[1:]}
        for query, item in enumerate(bench[split, "Scenes-Count"].queries):
            count = len(scene_of[item.image].objects)
            assert (
                _listed(bench[split, "Scenes-Count"], query)[0].text
                == scenes_bench.NUMBER_WORDS[count - 1]
            )
        for query, item in enumerate(bench[split, "Scenes-Object"].queries):
            scene = scene_of[item.image]
            listed = [c.text for c in _listed(bench[split, "Scenes-Object"], query)]
            largest = max(scenes.SIZES[obj.size] for obj in scene.objects)
            assert listed[0].split()[0] == next(
                size for size, value in scenes.SIZES.items() if value == largest
            )
            present = {scenes.describe_object(obj) for obj in scene.objects}
            assert not present & set(listed[1:]), "a negative label is in the picture"


def test_retrieval_pairs_each_image_with_its_own_caption(bench: dict, scene_of: dict) -> None:
    for split in SPLITS:
        i2t, t2i = bench[split, "Scenes-I2T"], bench[split, "Scenes-T2I"]
        for query, item in enumerate(i2t.queries):
            listed = _listed(i2t, query)
            assert listed[0].text == caption(scene_of[item.image])
            assert all(c.text != listed[0].text for c in listed[1:])
        for query, item in enumerate(t2i.queries):
            positive = _listed(t2i, query)[0]
            assert caption(scene_of[positive.image]) == item.text


def test_grounding_crops_show_the_referred_object_only(bench: dict, scene_of: dict) -> None:
    for split in SPLITS:
        task = bench[split, "Scenes-Grounding"]
        for query, item in enumerate(task.queries):
            found = re.search(
                r"Find the (\w+) (\w+) (\w+) in (this image|the ([\w ]+) cell)", item.text
            )
            size, colour, shape, _, cell = found.groups()
            scene = scene_of[item.image]
            listed = _listed(task, query)
            positive = listed[0]
            assert positive.image == item.image
            target = next(
                obj
                for obj in scene.objects
                if (obj.size, obj.colour, obj.shape) == (size, colour, shape)
                and cell in (None, obj.cell)
            )
            left, top, right, bottom = scenes.object_bbox(target, 56)
            box = positive.box
            assert box[0] <= left and box[1] <= top and box[2] >= right and box[3] >= bottom
            for negative in listed[1:]:
                other = scene_of[negative.image]
                shown = [obj for obj in other.objects if crop_box(obj, 56) == negative.box]
                assert len(shown) == 1
                assert (shown[0].colour, shown[0].shape) != (colour, shape)


def test_unseen_split_queries_show_held_out_pairs(bench: dict, scene_of: dict) -> None:
    held_out = scenes.held_out_pairs()
    for item in bench["test_unseen", "Scenes-Object"].queries:
        scene = scene_of[item.image]
        assert any((obj.colour, obj.shape) in held_out for obj in scene.objects)


def test_the_bench_is_deterministic_and_seeded(scene_pool: Path) -> None:
    def texts(seed: int) -> list[list[str]]:
        tasks = load_scenes_bench(scene_pool, ("test",), seed=seed)
        return [[c.text for c in task.candidates] for task in tasks]

    assert texts(0) == texts(0)
    assert texts(0) != texts(1)


def test_a_pool_without_the_split_is_a_clear_error(scene_pool: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split 'train_missing' has 0 scenes"):
        read_bench_scenes(scene_pool, ("test", "train_missing"))
    with pytest.raises(FileNotFoundError, match="no image pool"):
        read_bench_scenes(tmp_path, ("test",))
    graph = next(scene_pool.rglob("test-*.json"))
    broken = tmp_path / "pool"
    shutil.copytree(scene_pool, broken)
    (broken / graph.relative_to(scene_pool)).unlink()
    with pytest.raises(FileNotFoundError, match=r"scene graph .* is missing"):
        read_bench_scenes(broken, ("test",))


def test_summary_means_per_split_and_meta_task() -> None:
    def score(dataset: str, meta_task: str, group: str, value: float) -> DatasetScore:
        return DatasetScore(
            "scenes", dataset, meta_task, group, {"hit@1": value}, "hit@1", 10, 10.0
        )

    summary = scenes_bench.summarise_scenes(
        [
            score("A", "vqa", "test", 40.0),
            score("B", "vqa", "test", 20.0),
            score("C", "retrieval", "test", 90.0),
            score("A", "vqa", "test_unseen", 10.0),
        ]
    )
    assert summary["test/vqa"] == 30.0
    assert summary["test/overall"] == 50.0
    assert summary["test/overall/chance"] == 10.0
    assert summary["test/datasets"] == 3
    assert summary["test_unseen/overall"] == 10.0
