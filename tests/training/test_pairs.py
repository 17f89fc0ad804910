"""Pair data: the MMEB-train layout and M3T records as pairs (METHODS.md §1 stage 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muco.training.pairs import M3TPairs, MMEBTrainPairs, read_descriptions


def _mmeb(root: Path) -> Path:
    """Two subsets as on the hub: ``<subset>/<split>-*.parquet``; one without negatives."""
    (root / "MSCOCO_t2i").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "qry": ["<|image_1|>\nFind a caption.", "<|image_1|>\nAnother."],
                "qry_image_path": ["images/MSCOCO/a.jpg", "images/MSCOCO/b.jpg"],
                "pos_text": ["a dog on a couch", "two cats"],
                "pos_image_path": ["", ""],
                "neg_text": ["a cat on a couch", ""],
                "neg_image_path": ["", ""],
            }
        ),
        root / "MSCOCO_t2i" / "original-00000-of-00001.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "qry": ["<|image_1|>\nignored split"],
                "qry_image_path": ["images/MSCOCO/z.jpg"],
                "pos_text": ["x"],
                "pos_image_path": [""],
            }
        ),
        root / "MSCOCO_t2i" / "diverse_instruction-00000-of-00001.parquet",
    )
    (root / "VisualNews_t2i").mkdir()
    pq.write_table(
        pa.table(
            {
                "qry": ["Find the image of: a parade"],
                "qry_image_path": [""],
                "pos_text": ["<|image_1|>"],
                "pos_image_path": ["images/VisualNews/p.jpg"],
            }
        ),
        root / "VisualNews_t2i" / "original-00000-of-00001.parquet",
    )
    return root


def test_mmeb_train_layout_reads_every_subset_of_the_split(tmp_path: Path) -> None:
    root = _mmeb(tmp_path / "mmeb")
    descriptions = tmp_path / "descriptions.jsonl"
    descriptions.write_text(
        json.dumps({"image_path": "images/MSCOCO/a.jpg", "description": "A dog."})
        + "\n"
        + json.dumps({"image_path": "images/VisualNews/p.jpg", "description": "A parade."})
        + "\n"
    )
    pairs = MMEBTrainPairs(root, tmp_path / "img", descriptions=descriptions)
    assert len(pairs) == 3
    first = pairs[0]
    assert first.query == "<|image_1|>\nFind a caption."
    assert first.query_image == tmp_path / "img" / "images/MSCOCO/a.jpg"
    assert first.positive_image is None and first.negative == "a cat on a couch"
    assert first.query_description == "A dog." and first.image_id == "path:images/MSCOCO/a.jpg"
    assert not pairs[1].has_negative and pairs[1].query_description is None
    news = pairs[2]
    assert news.query_image is None and news.positive_description == "A parade."
    assert news.negative is None and news.image_id.startswith("row:VisualNews_t2i:")

    only = MMEBTrainPairs(root, tmp_path / "img", subsets=("VisualNews_t2i",))
    assert len(only) == 1
    other_split = MMEBTrainPairs(root, tmp_path / "img", split="diverse_instruction")
    # VisualNews has no diverse_instruction files: it is read whole.
    assert len(other_split) == 2 and other_split[0].query == "<|image_1|>\nignored split"


def test_mmeb_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        MMEBTrainPairs(tmp_path / "missing", tmp_path)
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"qry": ["q"]}), tmp_path / "bad" / "original-0.parquet")
    with pytest.raises(ValueError, match="missing column"):
        MMEBTrainPairs(tmp_path, tmp_path, subsets=("bad",))


def test_descriptions_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"image_path": ["a.jpg"], "description": ["A."]}), path)
    assert read_descriptions(path) == {"a.jpg": "A."}


def test_m3t_records_give_one_pair_per_turn(training_workspace: Path) -> None:
    pairs = M3TPairs(training_workspace / "m3t", training_workspace / "images", seed=0)
    assert len(pairs) == 16 * 7
    pair = pairs[8]  # record 1, turn 1
    record_variants = pairs.variants(8)
    assert pair in record_variants and len(record_variants) == 3  # three paraphrases
    assert pair.query_image is not None and pair.query_image.exists()
    assert pair.positive_image is None and pair.negative and pair.query_description
    assert pair.image_id == pairs[7].image_id != pairs[6].image_id
    # The paraphrase is a function of (seed, epoch, index).
    assert M3TPairs(training_workspace / "m3t", training_workspace / "images")[8] == pair
    drawn = set()
    for epoch in range(12):
        pairs.set_epoch(epoch)
        drawn.add(pairs[8].query)
    assert len(drawn) > 1
