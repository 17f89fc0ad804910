"""A tiny M-BEIR data root in the public layout: four configurations, tiny PNG images.

The configurations cover the cases the reader treats differently: MSCOCO's per-split local pool
names, a query with several positives, a qrels line of relevance 0, image-only queries, a
FashionIQ configuration (R@10 headline), and an InfoSeek query whose OVEN positive is only in
the union pool. The instruction texts are made up; the layout and field names are the public
ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

Record = dict[str, Any]

CONFIGURATIONS = ("mscoco_task0", "mscoco_task3", "fashioniq_task7", "infoseek_task6")

# (query modality, candidate modality, dataset name, dataset id, prompt_1, prompt_2): prompt_2
# shows that the reader takes the first one.
INSTRUCTION_ROWS = (
    ("text", "image", "MSCOCO", 9, "Find the everyday photo for this caption", "Other wording"),
    ("image", "text", "MSCOCO", 9, "Write what this everyday photo shows.", "Other wording"),
    ("image,text", "image", "FashionIQ", 7, "Find the garment after this change:", ""),
    ("image,text", "text", "INFOSEEK", 6, "Find the Wikipedia passage that answers", ""),
)

_IMAGES = {
    "mbeir_images/mscoco_images/test/red.png": (255, 0, 0),
    "mbeir_images/mscoco_images/test/blue.png": (0, 0, 255),
    "mbeir_images/mscoco_images/test/navy.png": (0, 0, 128),
    "mbeir_images/mscoco_images/test/green.png": (0, 255, 0),
    "mbeir_images/fashioniq_images/dress_a.png": (200, 100, 100),
    "mbeir_images/fashioniq_images/dress_b.png": (100, 50, 50),
    "mbeir_images/fashioniq_images/dress_c.png": (250, 250, 250),
    "mbeir_images/oven_images/00/tower.png": (120, 120, 120),
}


def _image_candidate(did: str, image: str) -> Record:
    return {"did": did, "txt": None, "img_path": image, "modality": "image"}


def _text_candidate(did: str, text: str) -> Record:
    return {"did": did, "txt": text, "img_path": None, "modality": "text"}


# Local pool file middle name -> candidates, in file order.
POOLS: dict[str, list[Record]] = {
    "mscoco_task0_test": [
        _image_candidate("9:1", "mbeir_images/mscoco_images/test/red.png"),
        _image_candidate("9:2", "mbeir_images/mscoco_images/test/blue.png"),
        _image_candidate("9:3", "mbeir_images/mscoco_images/test/navy.png"),
        _image_candidate("9:4", "mbeir_images/mscoco_images/test/green.png"),
    ],
    "mscoco_task3_test": [
        _text_candidate("9:5", "a red square"),
        _text_candidate("9:6", "a blue circle"),
        _text_candidate("9:7", '"two blue circles!"'),
    ],
    "fashioniq_task7": [
        _image_candidate("7:1", "mbeir_images/fashioniq_images/dress_a.png"),
        _image_candidate("7:2", "mbeir_images/fashioniq_images/dress_b.png"),
        _image_candidate("7:3", "mbeir_images/fashioniq_images/dress_c.png"),
    ],
    "infoseek_task6": [
        _text_candidate("6:1", "Eiffel Tower. It is in Paris."),
        _text_candidate("6:2", "Eiffel Tower. It is 330 metres tall."),
    ],
}

# In the union pool only: an OVEN passage (dataset 5) that InfoSeek query 6:1 also counts.
UNION_ONLY = [_text_candidate("5:1", "Eiffel Tower. Height: 330 m.")]


def _query(
    qid: str, text: str | None, image: str | None, modality: str, task: int, positives: list[str]
) -> Record:
    return {
        "qid": qid,
        "query_txt": text,
        "query_img_path": image,
        "query_modality": modality,
        "query_src_content": "{}",
        "pos_cand_list": positives,
        "neg_cand_list": [],
        "task_id": task,
    }


QUERIES: dict[str, list[Record]] = {
    "mscoco_task0": [
        _query("9:1", "a red square", None, "text", 0, ["9:1"]),
        _query("9:2", "blue circles", None, "text", 0, ["9:2", "9:3"]),
    ],
    "mscoco_task3": [
        _query("9:3", None, "mbeir_images/mscoco_images/test/red.png", "image", 3, ["9:5"]),
        _query("9:4", None, "mbeir_images/mscoco_images/test/blue.png", "image", 3, ["9:6", "9:7"]),
    ],
    "fashioniq_task7": [
        _query(
            "7:1",
            "is darker",
            "mbeir_images/fashioniq_images/dress_a.png",
            "image,text",
            7,
            ["7:2"],
        ),
    ],
    "infoseek_task6": [
        _query(
            "6:1",
            "how tall is this building?",
            "mbeir_images/oven_images/00/tower.png",
            "image,text",
            6,
            ["6:2", "5:1"],
        ),
    ],
}

# A judged negative (relevance 0), which must not become a positive.
ZERO_RELEVANCE = {"mscoco_task0": "9:1 0 9:4 0 0"}


def local_pool_path(root: Path, pool: str) -> Path:
    return root / "cand_pool" / "local" / f"mbeir_{pool}_cand_pool.jsonl"


def union_pool_path(root: Path) -> Path:
    return root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"


def query_path(root: Path, name: str) -> Path:
    return root / "query" / "test" / f"mbeir_{name}_test.jsonl"


def qrels_path(root: Path, name: str) -> Path:
    return root / "qrels" / "test" / f"mbeir_{name}_test_qrels.txt"


def instructions_path(root: Path) -> Path:
    return root / "instructions" / "query_instructions.tsv"


def union_pool() -> list[Record]:
    """The union pool's candidates in file order: every local pool plus UNION_ONLY, by did."""
    records = [record for pool in POOLS.values() for record in pool] + UNION_ONLY
    return sorted(records, key=lambda record: tuple(map(int, record["did"].split(":"))))


def write_mbeir_tree(root: Path) -> Path:
    """Write the data root under ``root`` and return it."""
    for relative, colour in _IMAGES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), colour).save(path)
    for pool, records in POOLS.items():
        write_jsonl(local_pool_path(root, pool), records)
    write_jsonl(union_pool_path(root), union_pool())
    for name, queries in QUERIES.items():
        write_jsonl(query_path(root, name), queries)
        write_lines(qrels_path(root, name), _qrels_lines(name, queries))
    header = "query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2"
    rows = ["\t".join(str(value) for value in row) for row in INSTRUCTION_ROWS]
    write_lines(instructions_path(root), [header, *rows])
    return root


def _qrels_lines(name: str, queries: list[Record]) -> list[str]:
    lines = [
        f"{query['qid']} 0 {did} 1 {query['task_id']}"
        for query in queries
        for did in query["pos_cand_list"]
    ]
    return lines + ([ZERO_RELEVANCE[name]] if name in ZERO_RELEVANCE else [])


def write_jsonl(path: Path, records: list[Record]) -> None:
    write_lines(path, [json.dumps(record) for record in records])


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def replace_line(path: Path, number: int, text: str | None) -> None:
    """Replace 1-based line ``number`` of ``path`` with ``text``, or delete it when ``None``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    write_lines(path, lines)
