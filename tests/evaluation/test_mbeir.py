"""M-BEIR reader: UniIR's configurations, pools, positives, instructions, errors and summary."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mbeir_fixtures import (
    CONFIGURATIONS,
    QUERIES,
    instructions_path,
    local_pool_path,
    qrels_path,
    query_path,
    replace_line,
    union_pool,
    union_pool_path,
    write_jsonl,
    write_lines,
    write_mbeir_tree,
)

from muco.evaluation import mbeir
from muco.evaluation.mbeir import format_text, load_mbeir, summarise_mbeir
from muco.evaluation.metrics import DatasetScore, score_task
from muco.evaluation.tasks import EvalItem, RankingTask


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_mbeir_tree(tmp_path / "M-BEIR")


def _load(root: Path, pool: mbeir.Pool = "local") -> dict[str, RankingTask]:
    return {task.name: task for task in load_mbeir(root, pool, CONFIGURATIONS)}


def _image(root: Path, name: str) -> str:
    return str(next(root.joinpath("mbeir_images").rglob(name)))


def _positives(task: RankingTask) -> list[list[int]]:
    return [positives.tolist() for positives in task.positives]


# --- the configuration table ---------------------------------------------------------------------


def test_sixteen_configurations_over_ten_datasets_with_uniir_names_and_cut_offs() -> None:
    configs = mbeir.CONFIGURATIONS
    assert len(configs) == 16 and len({config.name for config in configs}) == 16
    assert {config.dataset for config in configs} == set(mbeir.DATASET_IDS)
    fashion = {config.name for config in configs if config.primary_k == 10}
    assert fashion == {"fashion200k_task0", "fashion200k_task3", "fashioniq_task7"}
    assert all(config.ks == (10, 20, 50) for config in configs if config.name in fashion)
    assert all(config.ks == (1, 5, 10) for config in configs if config.name not in fashion)
    coco = next(config for config in configs if config.name == "mscoco_task3")
    assert coco.query_file == "query/test/mbeir_mscoco_task3_test.jsonl"
    assert coco.qrels_file == "qrels/test/mbeir_mscoco_task3_test_qrels.txt"
    assert coco.local_pool_file == "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"
    assert (coco.dataset_id, coco.query_modality, coco.candidate_modality) == (9, "image", "text")
    cirr = next(config for config in configs if config.name == "cirr_task7")
    assert cirr.local_pool_file == "cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl"
    assert cirr.meta_task == "(qi,qt)->ci"


def test_format_text_is_uniir_normalisation() -> None:
    assert format_text(' "a dog\r on grass" ') == "A dog on grass."
    assert format_text("why?") == "Why?"
    assert format_text(None) == "" and format_text("  ") == ""


# --- reading back --------------------------------------------------------------------------------


def test_local_tasks_read_items_pools_and_several_positives(root: Path) -> None:
    tasks = _load(root)
    assert list(tasks) == list(CONFIGURATIONS)
    t2i = tasks["mscoco_task0"]
    assert (t2i.benchmark, t2i.meta_task, t2i.group, t2i.metric) == (
        "mbeir",
        "qt->ci",
        "local",
        "recall",
    )
    assert t2i.candidate_lists is None
    assert t2i.candidates == tuple(
        EvalItem(image=_image(root, name))
        for name in ("red.png", "blue.png", "navy.png", "green.png")
    )
    # 9:2 has two positives; 9:4 is judged with relevance 0 and stays a negative.
    assert _positives(t2i) == [[0], [1, 2]]
    assert t2i.extra["pool_file"] == "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
    assert (t2i.extra["task_id"], t2i.extra["dataset"]) == ("0", "MSCOCO")

    i2t = tasks["mscoco_task3"]
    assert [item.text for item in i2t.candidates] == [
        "A red square.",
        "A blue circle.",
        "Two blue circles!",
    ]
    assert all(item.image is None for item in i2t.candidates)
    assert i2t.queries[1] == EvalItem(
        text="Write what this everyday photo shows.", image=_image(root, "blue.png")
    )
    assert _positives(i2t) == [[0], [1, 2]]


def test_instruction_is_the_first_prompt_prefixed_and_normalised(root: Path) -> None:
    tasks = _load(root)
    assert [query.text for query in tasks["mscoco_task0"].queries] == [
        "Find the everyday photo for this caption a red square.",
        "Find the everyday photo for this caption blue circles.",
    ]
    assert all(query.image is None for query in tasks["mscoco_task0"].queries)
    assert tasks["fashioniq_task7"].queries == (
        EvalItem(
            text="Find the garment after this change: is darker.",
            image=_image(root, "dress_a.png"),
        ),
    )
    assert tasks["infoseek_task6"].queries[0].text == (
        "Find the Wikipedia passage that answers how tall is this building?"
    )
    assert tasks["mscoco_task0"].extra["instruction"] == "Find the everyday photo for this caption"


def test_fashion_configurations_report_recall_at_10_20_50(root: Path) -> None:
    tasks = _load(root)
    assert (tasks["fashioniq_task7"].ks, tasks["fashioniq_task7"].primary_k) == ((10, 20, 50), 10)
    assert (tasks["mscoco_task0"].ks, tasks["mscoco_task0"].primary_k) == ((1, 5, 10), 5)


def test_union_pool_is_shared_and_unfiltered(root: Path) -> None:
    tasks = _load(root, "union")
    pool = tasks["mscoco_task0"].candidates
    assert len(pool) == len(union_pool()) == 13
    assert all(task.candidates is pool for task in tasks.values())
    assert all(task.group == "union" for task in tasks.values())
    # Union order is by did: 5:1, 6:1, 6:2, 7:1..7:3, 9:1..9:7.
    assert _positives(tasks["mscoco_task0"]) == [[6], [7, 8]]
    assert _positives(tasks["mscoco_task3"]) == [[10], [11, 12]]
    assert _positives(tasks["fashioniq_task7"]) == [[4]]


def test_other_datasets_positive_counts_in_the_union_pool_only(root: Path) -> None:
    # InfoSeek query 6:1 lists OVEN's 5:1, which the InfoSeek local pool lacks (UniIR's layout).
    assert _positives(_load(root)["infoseek_task6"]) == [[1]]
    assert _positives(_load(root, "union")["infoseek_task6"]) == [[0, 2]]


def test_no_configurations_means_all_sixteen_and_names_every_missing_file(root: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_mbeir(root)
    message = str(error.value)
    assert str(root / "query/test/mbeir_visualnews_task0_test.jsonl") in message
    assert str(root / "cand_pool/local/mbeir_infoseek_task8_cand_pool.jsonl") in message
    assert "mbeir_mscoco_task0_test.jsonl" not in message


def test_missing_union_pool_is_named(root: Path) -> None:
    union_pool_path(root).unlink()
    assert len(load_mbeir(root, "local", CONFIGURATIONS)) == 4  # the local pools do not need it
    with pytest.raises(FileNotFoundError, match=re.escape(str(union_pool_path(root)))):
        load_mbeir(root, "union", CONFIGURATIONS)


def test_selection_errors(root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown M-BEIR configurations \['coco_task0'\]"):
        load_mbeir(root, configurations=["coco_task0"])
    with pytest.raises(ValueError, match="named twice"):
        load_mbeir(root, configurations=["mscoco_task0", "mscoco_task0"])
    with pytest.raises(ValueError, match="pool must be 'local' or 'union'"):
        load_mbeir(root, "global", CONFIGURATIONS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        load_mbeir(root, configurations="mscoco_task0")


def test_a_subset_is_read_in_the_order_asked(root: Path) -> None:
    tasks = load_mbeir(root, configurations=["fashioniq_task7", "mscoco_task0"])
    assert [task.name for task in tasks] == ["fashioniq_task7", "mscoco_task0"]


# --- errors name the file and line ---------------------------------------------------------------


def _set_query(root: Path, name: str, line: int, **changes: object) -> None:
    replace_line(query_path(root, name), line, json.dumps({**QUERIES[name][line - 1], **changes}))


def _drop_field(path: Path, line: int, name: str) -> None:
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[line - 1])
    del record[name]
    replace_line(path, line, json.dumps(record))


def _only_oven_positive(root: Path) -> None:
    _set_query(root, "infoseek_task6", 1, pos_cand_list=["5:1"])
    write_lines(qrels_path(root, "infoseek_task6"), ["6:1 0 5:1 1 6"])


Mutation = Callable[[Path], None]

ERRORS = [
    pytest.param(
        lambda r: replace_line(query_path(r, "mscoco_task0"), 2, "{not json"),
        ValueError,
        r"mbeir_mscoco_task0_test\.jsonl:2: malformed JSON",
        id="malformed-json",
    ),
    pytest.param(
        lambda r: replace_line(local_pool_path(r, "mscoco_task3_test"), 2, "[1, 2]"),
        ValueError,
        r"mbeir_mscoco_task3_test_cand_pool\.jsonl:2: expected a JSON object",
        id="not-an-object",
    ),
    pytest.param(
        lambda r: _drop_field(local_pool_path(r, "mscoco_task3_test"), 3, "img_path"),
        ValueError,
        r"mbeir_mscoco_task3_test_cand_pool\.jsonl:3: missing field\(s\) \['img_path'\]",
        id="pool-missing-field",
    ),
    pytest.param(
        lambda r: _drop_field(query_path(r, "fashioniq_task7"), 1, "pos_cand_list"),
        ValueError,
        r"mbeir_fashioniq_task7_test\.jsonl:1: missing field\(s\) \['pos_cand_list'\]",
        id="query-missing-field",
    ),
    pytest.param(
        lambda r: replace_line(
            local_pool_path(r, "fashioniq_task7"),
            2,
            json.dumps({"did": "7:1", "txt": "x", "img_path": None, "modality": "text"}),
        ),
        ValueError,
        r"mbeir_fashioniq_task7_cand_pool\.jsonl:2: did '7:1' appears twice",
        id="duplicate-did",
    ),
    pytest.param(
        lambda r: _set_query(r, "mscoco_task0", 2, qid="9:1"),
        ValueError,
        r"mbeir_mscoco_task0_test\.jsonl:2: qid '9:1' already on line 1",
        id="duplicate-qid",
    ),
    pytest.param(
        lambda r: _set_query(r, "mscoco_task0", 1, pos_cand_list=["9:1", "9:99"]),
        ValueError,
        r"mbeir_mscoco_task0_test\.jsonl:1: did '9:99' is not in the candidate pool "
        r".*mbeir_mscoco_task0_test_cand_pool\.jsonl",
        id="unknown-did-in-pos-cand-list",
    ),
    pytest.param(
        lambda r: _set_query(r, "mscoco_task0", 1, pos_cand_list="9:1"),
        ValueError,
        r"mbeir_mscoco_task0_test\.jsonl:1: pos_cand_list must be a list",
        id="pos-cand-list-not-list",
    ),
    pytest.param(
        lambda r: _set_query(r, "mscoco_task3", 1, query_modality="text"),
        ValueError,
        r"mbeir_mscoco_task3_test\.jsonl:1: query_modality 'text', but mscoco_task3 has 'image'",
        id="wrong-query-modality",
    ),
    pytest.param(
        lambda r: _set_query(r, "mscoco_task3", 2, task_id=4),
        ValueError,
        r"mbeir_mscoco_task3_test\.jsonl:2: task_id 4, expected 3",
        id="wrong-task-id",
    ),
    pytest.param(
        lambda r: _set_query(r, "fashioniq_task7", 1, query_txt=7),
        ValueError,
        r"mbeir_fashioniq_task7_test\.jsonl:1: field 'query_txt' must be a string or null",
        id="query-txt-not-string",
    ),
    pytest.param(
        lambda r: write_lines(query_path(r, "fashioniq_task7"), []),
        ValueError,
        r"mbeir_fashioniq_task7_test\.jsonl: no queries",
        id="no-queries",
    ),
    pytest.param(
        lambda r: replace_line(qrels_path(r, "mscoco_task0"), 4, "9:1 0 9:99 1 0"),
        ValueError,
        r"mbeir_mscoco_task0_test_qrels\.txt:4: did '9:99' is not in the candidate pool",
        id="unknown-did-in-qrels",
    ),
    pytest.param(
        lambda r: replace_line(qrels_path(r, "mscoco_task0"), 1, "9:77 0 9:1 1 0"),
        ValueError,
        r"mbeir_mscoco_task0_test_qrels\.txt:1: qid '9:77' is not in "
        r"query/test/mbeir_mscoco_task0_test\.jsonl",
        id="qrels-unknown-qid",
    ),
    pytest.param(
        lambda r: replace_line(qrels_path(r, "mscoco_task0"), 1, "9:1 0 9:1"),
        ValueError,
        r"mbeir_mscoco_task0_test_qrels\.txt:1: expected 'qid 0 did relevance task_id'",
        id="qrels-short-line",
    ),
    pytest.param(
        lambda r: replace_line(qrels_path(r, "mscoco_task0"), 2, "9:2 0 9:2 yes 0"),
        ValueError,
        r"mbeir_mscoco_task0_test_qrels\.txt:2: relevance 'yes' is not an integer",
        id="qrels-bad-relevance",
    ),
    pytest.param(
        lambda r: replace_line(qrels_path(r, "mscoco_task0"), 2, "9:2 0 9:2 1 3"),
        ValueError,
        r"mbeir_mscoco_task0_test_qrels\.txt:2: task id '3', expected 0",
        id="qrels-wrong-task",
    ),
    pytest.param(
        lambda r: replace_line(qrels_path(r, "mscoco_task0"), 3, None),
        ValueError,
        r"mbeir_mscoco_task0_test\.jsonl:2: pos_cand_list \['9:2', '9:3'\] disagrees with the "
        r"positives of '9:2' in .*mbeir_mscoco_task0_test_qrels\.txt: \['9:2'\]",
        id="qrels-disagree-with-pos-cand-list",
    ),
    pytest.param(
        _only_oven_positive,
        ValueError,
        r"mbeir_infoseek_task6_test\.jsonl:1: no positive of '6:1' is in the pool "
        r".*mbeir_infoseek_task6_cand_pool\.jsonl",
        id="no-positive-in-pool",
    ),
    pytest.param(
        lambda r: (r / "mbeir_images/mscoco_images/test/green.png").unlink(),
        FileNotFoundError,
        r"mbeir_mscoco_task0_test_cand_pool\.jsonl:4: image .*green\.png is missing",
        id="missing-pool-image",
    ),
    pytest.param(
        lambda r: (r / "mbeir_images/oven_images/00/tower.png").unlink(),
        FileNotFoundError,
        r"mbeir_infoseek_task6_test\.jsonl:1: image .*tower\.png is missing",
        id="missing-query-image",
    ),
    pytest.param(
        lambda r: replace_line(
            local_pool_path(r, "infoseek_task6"),
            1,
            json.dumps({"did": "6:1", "txt": " ", "img_path": None, "modality": "text"}),
        ),
        ValueError,
        r"mbeir_infoseek_task6_cand_pool\.jsonl:1: neither text nor image",
        id="empty-candidate",
    ),
    pytest.param(
        lambda r: write_jsonl(local_pool_path(r, "fashioniq_task7"), []),
        ValueError,
        r"mbeir_fashioniq_task7_cand_pool\.jsonl: empty candidate pool",
        id="empty-pool",
    ),
    pytest.param(
        lambda r: replace_line(instructions_path(r), 4, None),
        ValueError,
        r"query_instructions\.tsv: no instruction for dataset 7 \(FashionIQ\), "
        r"image,text -> image \(needed by fashioniq_task7\)",
        id="instruction-pair-missing",
    ),
    pytest.param(
        lambda r: replace_line(instructions_path(r), 1, "query_modality\tcand_modality\tprompt_1"),
        ValueError,
        r"query_instructions\.tsv: header needs columns \['dataset_id'",
        id="instruction-header",
    ),
    pytest.param(
        lambda r: replace_line(instructions_path(r), 3, "image\ttext\tMSCOCO\tnine\tWrite."),
        ValueError,
        r"query_instructions\.tsv:3: dataset_id 'nine' is not a number",
        id="instruction-dataset-id",
    ),
    pytest.param(
        lambda r: replace_line(instructions_path(r), 3, "image\ttext\tMSCOCO\t9\t\t"),
        ValueError,
        r"query_instructions\.tsv:3: no instruction in the row",
        id="instruction-empty-row",
    ),
    pytest.param(
        lambda r: replace_line(instructions_path(r), 3, "image\ttext\tMSCOCO\t9\ta\tb\tc"),
        ValueError,
        r"query_instructions\.tsv:3: 7 columns, the header has 6",
        id="instruction-too-many-columns",
    ),
    pytest.param(
        lambda r: replace_line(instructions_path(r), 3, "text\timage\tMSCOCO\t9\tAgain."),
        ValueError,
        r"query_instructions\.tsv:3: a second row for \(9, 'text', 'image'\)",
        id="instruction-duplicate-row",
    ),
]


@pytest.mark.parametrize(("mutate", "kind", "message"), ERRORS)
def test_bad_input_is_an_error_naming_file_and_line(
    root: Path, mutate: Mutation, kind: type[Exception], message: str
) -> None:
    mutate(root)
    with pytest.raises(kind, match=message):
        load_mbeir(root, "local", CONFIGURATIONS)


def test_unknown_did_in_the_union_pool_is_an_error_even_from_another_dataset(root: Path) -> None:
    records = [record for record in union_pool() if record["did"] != "5:1"]
    write_jsonl(union_pool_path(root), records)
    with pytest.raises(ValueError, match=r"mbeir_infoseek_task6_test\.jsonl:1: did '5:1' is not"):
        load_mbeir(root, "union", CONFIGURATIONS)


def test_blank_lines_and_short_instruction_rows_are_read(root: Path) -> None:
    path = query_path(root, "mscoco_task0")
    path.write_text(path.read_text(encoding="utf-8") + "\n\n", encoding="utf-8")
    replace_line(instructions_path(root), 5, "image,text\ttext\tINFOSEEK\t6\tShort row")
    tasks = _load(root)
    assert len(tasks["mscoco_task0"].queries) == 2
    assert tasks["infoseek_task6"].queries[0].text.startswith("Short row how tall")


# --- scoring -------------------------------------------------------------------------------------


def _unit(rows: list[list[float]]) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_score_task_on_a_read_task_gives_hand_counted_recall(root: Path) -> None:
    task = _load(root)["mscoco_task0"]
    candidates = np.eye(4)  # red, blue, navy, green
    queries = _unit(
        [
            [0.6, 0.8, 0.0, 0.0],  # positive red (0.6) is beaten by blue (0.8): rank 2
            [0.0, 0.1, 0.9, 0.4],  # positives blue/navy: navy (0.9) is first: rank 1
        ]
    )
    score = score_task(task, queries, candidates)
    assert score.values == {"recall@1": 50.0, "recall@5": 100.0, "recall@10": 100.0}
    assert (score.primary, score.score, score.queries) == ("recall@5", 100.0, 2)


def test_union_scoring_counts_the_other_datasets_positive(root: Path) -> None:
    task = _load(root, "union")["infoseek_task6"]
    candidates = np.eye(13)
    query = np.zeros((1, 13))
    query[0, 1], query[0, 0] = 0.8, 0.6  # 6:1 (negative) first, OVEN's 5:1 (positive) second
    score = score_task(task, query, candidates)
    assert score.values == {"recall@1": 0.0, "recall@5": 100.0, "recall@10": 100.0}


# --- summary --------------------------------------------------------------------------------------


def _score(dataset: str, group: str, values: dict[str, float], queries: int) -> DatasetScore:
    config = next(config for config in mbeir.CONFIGURATIONS if config.name == dataset)
    return DatasetScore(
        benchmark="mbeir",
        dataset=dataset,
        meta_task=config.meta_task,
        group=group,
        values=values,
        primary=f"recall@{config.primary_k}",
        queries=queries,
        chance=0.0,
    )


def test_summary_means_headline_recall_per_pool_and_task() -> None:
    scores = [
        _score("mscoco_task0", "local", {"recall@1": 10.0, "recall@5": 50.0}, 2),
        _score("mscoco_task3", "local", {"recall@5": 100.0}, 2),
        _score("fashioniq_task7", "local", {"recall@10": 0.0, "recall@20": 90.0}, 1),
        _score("cirr_task7", "local", {"recall@5": 30.0}, 4),
        _score("mscoco_task0", "union", {"recall@5": 20.0}, 2),
    ]
    assert summarise_mbeir(scores) == {
        "local/configurations": 4,
        "local/queries": 9,
        "local/overall": (50.0 + 100.0 + 0.0 + 30.0) / 4,
        "local/qt->ci": 50.0,
        "local/qi->ct": 100.0,
        "local/(qi,qt)->ci": (0.0 + 30.0) / 2,
        "union/configurations": 1,
        "union/queries": 2,
        "union/overall": 20.0,
        "union/qt->ci": 20.0,
    }


def test_summary_rejects_what_is_not_one_m_beir_run() -> None:
    good = _score("cirr_task7", "local", {"recall@5": 30.0}, 4)
    with pytest.raises(ValueError, match="no M-BEIR scores"):
        summarise_mbeir([])
    with pytest.raises(ValueError, match="cirr_task7 scored twice on the local pool"):
        summarise_mbeir([good, good])
    other = DatasetScore("mmeb", "CIRR", "retrieval", "IND", {"hit@1": 1.0}, "hit@1", 1, 0.0)
    with pytest.raises(ValueError, match="not an M-BEIR configuration: mmeb/CIRR"):
        summarise_mbeir([other])
    wrong = _score("fashioniq_task7", "local", {"recall@5": 1.0}, 1)
    wrong = DatasetScore(**{**wrong.__dict__, "primary": "recall@5"})
    with pytest.raises(
        ValueError, match="fashioniq_task7: headline recall@5, M-BEIR's is recall@10"
    ):
        summarise_mbeir([wrong])
