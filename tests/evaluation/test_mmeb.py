"""MMEB reader: the public layouts, both variants, the protocol tables, errors, the summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mmeb_fixtures import LAYOUTS, Row, table, write_dataset, write_png

from muco.evaluation.metrics import DatasetScore, score_task
from muco.evaluation.mmeb import (
    DATASETS,
    IND_DATASETS,
    META_TASK_DATASETS,
    PROTOCOL_VERSION,
    dataset_info,
    load_mmeb,
    summarise_mmeb,
    tidy_text,
)
from muco.evaluation.tasks import EvalItem, RankingTask

CLS_INSTRUCTION = "Represent the given image for classification"
VQA_INSTRUCTION = "Represent the given image with the following question:"
T2I_INSTRUCTION = "Retrieve an image of news that matches the caption:"
IMAGE_TARGET = "Represent the given image."


def _cls_row(image: str, labels: list[str]) -> Row:
    return {
        "qry_text": f"<|image_1|> {CLS_INSTRUCTION}",
        "qry_img_path": image,
        "tgt_text": labels,
        "tgt_img_path": [""] * len(labels),
    }


CLS_ROWS = [
    _cls_row("cls/a.png", ["cat", "dog", "fish"]),
    _cls_row("cls/b.png", ["dog", "cat", "bird"]),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "MMEB-eval"
    folder.mkdir()
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "image-tasks"
    for name, colour in (("cls/a", (255, 0, 0)), ("cls/b", (0, 255, 0))):
        write_png(root / f"{name}.png", colour)
    for name, colour in (("news/x", (0, 0, 255)), ("news/y", (9, 9, 9)), ("news/z", (1, 2, 3))):
        write_png(root / f"{name}.png", colour)
    return root


def _only(tasks: list[RankingTask]) -> RankingTask:
    assert len(tasks) == 1
    return tasks[0]


def _lists(task: RankingTask) -> list[list[int]]:
    assert task.candidate_lists is not None
    return [listed.tolist() for listed in task.candidate_lists]


# --- layouts and items ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_items_lists_and_positives(
    data: Path, images: Path, layout: str
) -> None:
    write_dataset(data, "ImageNet_1K", CLS_ROWS, layout=layout, shards=2)
    task = _only(load_mmeb(data, images, ["ImageNet_1K"]))

    assert (task.benchmark, task.name, task.meta_task, task.group) == (
        "mmeb",
        "ImageNet_1K",
        "classification",
        "ind",
    )
    assert task.queries == (
        EvalItem(f"<|image_1|> {CLS_INSTRUCTION}", str(images / "cls/a.png")),
        EvalItem(f"<|image_1|> {CLS_INSTRUCTION}", str(images / "cls/b.png")),
    )
    assert task.candidates == tuple(EvalItem(label) for label in ("cat", "dog", "fish", "bird"))
    assert _lists(task) == [[0, 1, 2], [1, 0, 3]]
    assert [positive.tolist() for positive in task.positives] == [[0], [1]]
    assert (task.ks, task.primary_k, task.metric) == ((1,), 1, "hit")
    assert task.extra == {"protocol": PROTOCOL_VERSION, "variant": "original"}


def test_image_candidates_keep_their_instruction_and_share_the_pool(
    data: Path, images: Path
) -> None:
    target = f"<|image_1|>\n{IMAGE_TARGET}"
    rows = [
        {
            "qry_text": f"{T2I_INSTRUCTION} a blue square",
            "qry_img_path": "",
            "tgt_text": [target] * 3,
            "tgt_img_path": ["news/x.png", "news/y.png", "news/z.png"],
        },
        {
            "qry_text": f"{T2I_INSTRUCTION} a grey square",
            "qry_img_path": "",
            "tgt_text": [target] * 2,
            "tgt_img_path": ["news/y.png", "news/x.png"],
        },
    ]
    write_dataset(data, "VisualNews_t2i", rows)
    task = _only(load_mmeb(data, images, ["visualnews-T2I"]))

    assert (task.name, task.meta_task, task.group) == ("VisualNews_t2i", "retrieval", "ind")
    assert task.queries[0] == EvalItem(f"{T2I_INSTRUCTION} a blue square", None)
    assert task.candidates == tuple(
        EvalItem(target, str(images / f"news/{name}.png")) for name in "xyz"
    )
    assert _lists(task) == [[0, 1, 2], [1, 0]]


def test_rows_are_numbered_across_shards(data: Path, images: Path) -> None:
    rows = [*CLS_ROWS, _cls_row("cls/gone.png", ["cat"])]
    write_dataset(data, "ImageNet_1K", rows, shards=2)
    with pytest.raises(FileNotFoundError, match=r"row 2 \(test-00001-of-00002\.parquet\)"):
        load_mmeb(data, images, ["ImageNet_1K"])


def test_folder_spelled_differently_is_found_and_named_canonically(
    data: Path, images: Path
) -> None:
    write_dataset(data, "ImageNet-1K", CLS_ROWS)
    assert _only(load_mmeb(data, images, ["ImageNet-1K"])).name == "ImageNet_1K"


def test_no_selection_reads_all_36_in_protocol_order(data: Path, images: Path) -> None:
    for dataset in DATASETS:
        write_dataset(data, dataset.name, CLS_ROWS[:1])
    tasks = load_mmeb(data, images)
    assert [(t.name, t.meta_task, t.group) for t in tasks] == [
        (d.name, d.meta_task, d.group) for d in DATASETS
    ]


# --- variants and placeholder ---------------------------------------------------------------------


def _instruct(row: Row, instruction: str, text: str) -> Row:
    return {"qry_inst": instruction, **row, "qry_text": text}


@pytest.mark.parametrize("layout", ["hub", "save_to_disk"])
def test_instruct_variant_reads_as_the_original(tmp_path: Path, images: Path, layout: str) -> None:
    vqa = {
        "qry_text": f"<|image_1|> {VQA_INSTRUCTION} What colour is it?",
        "qry_img_path": "cls/a.png",
        "tgt_text": ["red", "green"],
        "tgt_img_path": ["", ""],
    }
    t2i = {
        "qry_text": f"{T2I_INSTRUCTION} a blue square",
        "qry_img_path": "",
        "tgt_text": [f"<|image_1|>\n{IMAGE_TARGET}"] * 2,
        "tgt_img_path": ["news/x.png", "news/y.png"],
    }
    original, instruct = tmp_path / "original", tmp_path / "instruct"
    write_dataset(original, "ImageNet_1K", CLS_ROWS, layout)
    write_dataset(original, "OK-VQA", [vqa], layout)
    write_dataset(original, "VisualNews_t2i", [t2i], layout)
    cls_rows = [_instruct(row, f"<|image_1|> {CLS_INSTRUCTION}", "") for row in CLS_ROWS]
    write_dataset(instruct, "ImageNet_1K", cls_rows, layout)
    vqa_row = _instruct(vqa, f"<|image_1|> {VQA_INSTRUCTION}", "What colour is it?")
    write_dataset(instruct, "OK-VQA", [vqa_row], layout)
    t2i_row = {
        **_instruct(t2i, T2I_INSTRUCTION, "a blue square"),
        "tgt_inst": f"<|image_1|>\n{IMAGE_TARGET}",
        "tgt_text": ["", ""],
    }
    write_dataset(instruct, "VisualNews_t2i", [t2i_row], layout)

    names = ["ImageNet_1K", "OK-VQA", "VisualNews_t2i"]
    for old, new in zip(
        load_mmeb(original, images, names), load_mmeb(instruct, images, names), strict=True
    ):
        assert new.queries == old.queries
        assert new.candidates == old.candidates
        assert _lists(new) == _lists(old)
        assert (old.extra["variant"], new.extra["variant"]) == ("original", "instruct")
    vqa_task = load_mmeb(instruct, images, ["OK-VQA"])[0]
    assert vqa_task.queries[0].text == f"<|image_1|> {VQA_INSTRUCTION} What colour is it?"


@pytest.mark.parametrize(
    ("text", "has_image", "expected"),
    [
        (f"<|image_1|> {CLS_INSTRUCTION}", True, f"<|image_1|> {CLS_INSTRUCTION}"),
        (f"<|image_1|>\n{IMAGE_TARGET}\n", True, f"<|image_1|>\n{IMAGE_TARGET}"),
        (f"<|image_1|>\n{IMAGE_TARGET}\n", False, IMAGE_TARGET),
        ("  a plain label \n", False, "a plain label"),
        ("<|image_1|>", False, ""),
    ],
)
def test_placeholder_is_kept_with_an_image_and_dropped_without(
    text: str, has_image: bool, expected: str
) -> None:
    assert tidy_text(text, has_image) == expected


# --- protocol tables ------------------------------------------------------------------------------


def test_protocol_tables_match_methods() -> None:
    assert {meta: len(names) for meta, names in META_TASK_DATASETS.items()} == {
        "classification": 10,
        "vqa": 10,
        "retrieval": 12,
        "grounding": 4,
    }
    assert len(DATASETS) == 36
    assert len({d.name.replace("-", "").replace("_", "").lower() for d in DATASETS}) == 36
    assert len(IND_DATASETS) == 20
    assert IND_DATASETS.issubset(d.name for d in DATASETS)
    assert sum(d.group == "ood" for d in DATASETS) == 16
    expected = {
        "ImageNet_1K": ("classification", "ind"),
        "Place365": ("classification", "ood"),
        "OK-VQA": ("vqa", "ind"),
        "ScienceQA": ("vqa", "ood"),
        "MSCOCO_t2i": ("retrieval", "ind"),
        "Wiki-SS-NQ": ("retrieval", "ood"),
        "MSCOCO": ("grounding", "ind"),
        "Visual7W-Pointing": ("grounding", "ood"),
    }
    for name, (meta_task, group) in expected.items():
        info = dataset_info(name)
        assert (info.name, info.meta_task, info.group) == (name, meta_task, group)


@pytest.mark.parametrize("spelling", ["ImageNet-1K", "imagenet_1k", "IMAGENET1K"])
def test_names_match_ignoring_dashes_underscores_and_case(spelling: str) -> None:
    assert dataset_info(spelling).name == "ImageNet_1K"


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"), [("ImageNet-1KK", "ImageNet_1K"), ("VisualNews_t2", "VisualNews_t2i")]
)
def test_unknown_dataset_names_it_and_suggests(
    data: Path, images: Path, name: str, suggestion: str
) -> None:
    with pytest.raises(ValueError, match=rf"{name}'; did you mean {suggestion}\?"):
        load_mmeb(data, images, [name])


def test_missing_dataset_folders_are_named(data: Path, images: Path) -> None:
    write_dataset(data, "ImageNet_1K", CLS_ROWS)
    with pytest.raises(FileNotFoundError, match=r"not found in .*MMEB-eval: OK-VQA, CIRR$"):
        load_mmeb(data, images, ["ImageNet_1K", "OK-VQA", "CIRR"])
    with pytest.raises(FileNotFoundError, match=r"N24News, HatefulMemes, .*Visual7W-Pointing$"):
        load_mmeb(data, images)


def test_two_folders_spelled_alike_are_an_error(data: Path, images: Path) -> None:
    write_dataset(data, "ImageNet-1K", CLS_ROWS)
    write_dataset(data, "imagenet_1k", CLS_ROWS)
    with pytest.raises(ValueError, match=r"MMEB ImageNet_1K: several folders match: .*ImageNet-1K"):
        load_mmeb(data, images, ["ImageNet_1K"])


def test_missing_roots_are_named(data: Path, images: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data folder not found: .*nowhere"):
        load_mmeb(tmp_path / "nowhere", images)
    with pytest.raises(FileNotFoundError, match=r"image root not found: .*nowhere"):
        load_mmeb(data, tmp_path / "nowhere")


def test_unrecognised_layout_names_folder_and_layouts(data: Path, images: Path) -> None:
    (data / "ImageNet_1K").mkdir()
    pq.write_table(table(CLS_ROWS), data / "ImageNet_1K" / "train-00000-of-00001.parquet")
    with pytest.raises(FileNotFoundError) as error:
        load_mmeb(data, images, ["ImageNet_1K"])
    message = str(error.value)
    assert str(data / "ImageNet_1K") in message
    assert "DATASET/test-*.parquet; DATASET/test/*.parquet; DATASET/data/test-*.parquet" in message
    assert "save_to_disk" in message


def test_two_layouts_at_once_are_an_error(data: Path, images: Path) -> None:
    write_dataset(data, "ImageNet_1K", CLS_ROWS, layout="hub")
    write_dataset(data, "ImageNet_1K", CLS_ROWS, layout="data_dir")
    with pytest.raises(ValueError, match=r"several MMEB test splits in .*ImageNet_1K"):
        load_mmeb(data, images, ["ImageNet_1K"])


def test_dataset_dict_without_test_split(data: Path, images: Path) -> None:
    root = write_dataset(data, "ImageNet_1K", CLS_ROWS, layout="dataset_dict")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(ValueError, match=r"dataset_dict\.json lists no test split .*'train'"):
        load_mmeb(data, images, ["ImageNet_1K"])


def test_state_json_listing_a_missing_shard(data: Path, images: Path) -> None:
    root = write_dataset(data, "ImageNet_1K", CLS_ROWS, layout="save_to_disk")
    (root / "test" / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(FileNotFoundError, match=r"lists data-00000-of-00001\.arrow"):
        load_mmeb(data, images, ["ImageNet_1K"])


def test_state_json_without_data_files(data: Path, images: Path) -> None:
    root = write_dataset(data, "ImageNet_1K", CLS_ROWS, layout="save_to_disk")
    (root / "test" / "state.json").write_text(json.dumps({"_split": "test"}))
    with pytest.raises(ValueError, match=r"state\.json lists no _data_files"):
        load_mmeb(data, images, ["ImageNet_1K"])


@pytest.mark.parametrize(
    ("layout", "file"),
    [("hub", "test-00000-of-00001.parquet"), ("save_to_disk", "test/data-00000-of-00001.arrow")],
)
def test_missing_column_names_dataset_file_and_column(
    data: Path, images: Path, layout: str, file: str
) -> None:
    rows = [{key: value for key, value in row.items() if key != "tgt_img_path"} for row in CLS_ROWS]
    write_dataset(data, "ImageNet_1K", rows, layout=layout)
    with pytest.raises(ValueError) as error:
        load_mmeb(data, images, ["ImageNet_1K"])
    path = data / "ImageNet_1K" / file
    assert str(error.value) == f"MMEB ImageNet_1K: {path} has no column tgt_img_path"


def test_instruction_column_missing_from_a_later_shard(data: Path, images: Path) -> None:
    write_dataset(data, "ImageNet_1K", [_instruct(CLS_ROWS[0], CLS_INSTRUCTION, "")])
    folder = data / "ImageNet_1K"
    pq.write_table(table(CLS_ROWS[1:]), folder / "test-00001-of-00001.parquet")
    with pytest.raises(ValueError, match=r"test-00001-of-00001\.parquet has no column qry_inst"):
        load_mmeb(data, images, ["ImageNet_1K"])


def _broken(row: Row, index: int = 1) -> list[Row]:
    rows = [dict(r) for r in CLS_ROWS]
    rows[index].update(row)
    return rows


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tgt_img_path": ["", ""]},
            r"MMEB ImageNet_1K: row 1 \(.*\): tgt_text has 3 candidates but tgt_img_path has 2",
        ),
        ({"tgt_text": [], "tgt_img_path": []}, r"MMEB ImageNet_1K: row 1 .*empty candidate list"),
        (
            {"qry_text": "<|image_1|>", "qry_img_path": ""},
            r"MMEB ImageNet_1K: row 1 .*, query: no text and no image",
        ),
        (
            {"tgt_text": ["dog", " ", "bird"]},
            r"MMEB ImageNet_1K: row 1 .*, candidate 1: no text and no image",
        ),
    ],
)
def test_bad_rows_are_named(data: Path, images: Path, change: Row, message: str) -> None:
    write_dataset(data, "ImageNet_1K", _broken(change))
    with pytest.raises(ValueError, match=message):
        load_mmeb(data, images, ["ImageNet_1K"])


@pytest.mark.parametrize(
    ("change", "column"),
    [
        ({"qry_img_path": "cls/missing.png"}, "qry_img_path"),
        (
            {"tgt_text": ["x", "y"], "tgt_img_path": ["cls/a.png", "cls/missing.png"]},
            "tgt_img_path",
        ),
    ],
)
def test_missing_image_names_dataset_row_column_and_path(
    data: Path, images: Path, change: Row, column: str
) -> None:
    write_dataset(data, "ImageNet_1K", _broken(change))
    missing = images / "cls" / "missing.png"
    with pytest.raises(FileNotFoundError) as error:
        load_mmeb(data, images, ["ImageNet_1K"])
    assert str(error.value) == (
        f"MMEB ImageNet_1K: row 1 (test-00000-of-00001.parquet), column {column}: "
        f"image not found: {missing}"
    )


def test_empty_split_is_an_error(data: Path, images: Path) -> None:
    write_dataset(data, "ImageNet_1K", [], columns=list(CLS_ROWS[0]))
    with pytest.raises(ValueError, match=r"MMEB ImageNet_1K: the test split in .* has no rows"):
        load_mmeb(data, images, ["ImageNet_1K"])


# --- scoring --------------------------------------------------------------------------------------


def test_score_task_counts_hits_and_ties_against_the_positive(data: Path, images: Path) -> None:
    rows = [
        _cls_row("cls/a.png", ["cat", "dog", "fish"]),  # query like cat: hit
        _cls_row("cls/b.png", ["dog", "cat", "bird"]),  # query like cat, positive dog: miss
        _cls_row("cls/a.png", ["fish", "bird"]),  # fish and bird tie: miss
    ]
    write_dataset(data, "ImageNet_1K", rows)
    task = _only(load_mmeb(data, images, ["ImageNet_1K"]))
    assert [item.text for item in task.candidates] == ["cat", "dog", "fish", "bird"]
    basis = np.eye(3, dtype=np.float32)
    candidates = basis[[0, 1, 2, 2]]  # bird embeds exactly like fish
    queries = basis[[0, 0, 2]]

    score = score_task(task, queries, candidates)

    assert score.values == {"hit@1": pytest.approx(100 / 3)}
    assert score.chance == pytest.approx(100 * (1 / 3 + 1 / 3 + 1 / 2) / 3)
    assert (score.benchmark, score.dataset, score.queries) == ("mmeb", "ImageNet_1K", 3)


def _score(dataset: str, hit: float, chance: float = 1.0, benchmark: str = "mmeb") -> DatasetScore:
    info = dataset_info(dataset)
    return DatasetScore(
        benchmark=benchmark,
        dataset=info.name,
        meta_task=info.meta_task,
        group=info.group,
        values={"hit@1": hit},
        primary="hit@1",
        queries=10,
        chance=chance,
    )


def test_summary_weighs_every_dataset_equally() -> None:
    scores = [
        _score("ImageNet_1K", 80.0, chance=0.1),
        _score("Place365", 40.0, chance=0.3),
        _score("OK-VQA", 60.0, chance=0.2),
        _score("OVEN", 30.0, chance=0.4),
        _score("MSCOCO", 90.0, chance=1.0),
    ]
    assert summarise_mmeb(scores) == {
        "datasets": 5,
        "overall": pytest.approx(60.0),
        "overall/chance": pytest.approx(0.4),
        "meta_task/classification": pytest.approx(60.0),
        "meta_task/classification/chance": pytest.approx(0.2),
        "meta_task/classification/datasets": 2,
        "meta_task/vqa": pytest.approx(60.0),
        "meta_task/vqa/chance": pytest.approx(0.2),
        "meta_task/vqa/datasets": 1,
        "meta_task/retrieval": pytest.approx(30.0),
        "meta_task/retrieval/chance": pytest.approx(0.4),
        "meta_task/retrieval/datasets": 1,
        "meta_task/grounding": pytest.approx(90.0),
        "meta_task/grounding/chance": pytest.approx(1.0),
        "meta_task/grounding/datasets": 1,
        "ind": pytest.approx((80.0 + 60.0 + 90.0) / 3),
        "ind/chance": pytest.approx((0.1 + 0.2 + 1.0) / 3),
        "ind/datasets": 3,
        "ood": pytest.approx(35.0),
        "ood/chance": pytest.approx(0.35),
        "ood/datasets": 2,
    }


def test_summary_leaves_out_absent_meta_tasks_and_groups() -> None:
    summary = summarise_mmeb([_score("Place365", 50.0)])
    assert summary["overall"] == summary["ood"] == summary["meta_task/classification"] == 50.0
    assert "ind" not in summary and "meta_task/vqa" not in summary


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([], "no MMEB scores"),
        ([_score("OVEN", 1.0), _score("OVEN", 2.0)], "scored more than once: OVEN"),
        ([_score("OVEN", 1.0, benchmark="scenes")], "scenes/OVEN: not an MMEB hit@1 score"),
        (
            [dataclasses.replace(_score("OVEN", 1.0), meta_task="ocr")],
            "mmeb/OVEN: unknown meta-task 'ocr'",
        ),
    ],
)
def test_summary_rejects_what_would_skew_the_means(
    scores: list[DatasetScore], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        summarise_mmeb(scores)
