"""M3T record shards: our schema round-trips, the public layout reads, DuckDB views count right."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muco.inspection import describe_records
from muco.records import (
    M3TRecord,
    connect,
    iter_contents,
    read_records,
    record_id,
    write_shards,
)
from muco.synthesis.content import M3T_TURN_TYPES, M3TContent


def _content(tag: str, turns: int = 7) -> M3TContent:
    return M3TContent(
        qry=tuple((f"<|image_1|>\nq{i} {tag}", f"<|image_1|>\nq{i}' {tag}") for i in range(turns)),
        pos_text=tuple(f"answer {i} {tag}" for i in range(turns)),
        pos_sentence=tuple(f"The answer is {i} {tag}." for i in range(turns)),
        neg_text=tuple(f"wrong {i} {tag}" for i in range(turns)),
        qry_sentence=f"an image {tag}",
        turn_types=tuple(M3T_TURN_TYPES[:turns]),
    )


def _record(tag: str, generator: str = "scene_graph") -> M3TRecord:
    identity = {"generator": generator, "model": "m", "prompt_version": "v", "sampling": {}}
    return M3TRecord(
        record_id=record_id(f"sha-{tag}", identity),
        image_sha256=f"sha-{tag}",
        qry_image_path=f"scenes/train/{tag}.png",
        content=_content(tag),
        generator=generator,
        generator_model="m",
        prompt_version="v",
        sampling={"seed": 0},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_shards_round_trip_and_split_by_size(tmp_path: Path) -> None:
    records = [_record(str(i)) for i in range(5)]
    paths = write_shards(records, tmp_path, shard_size=2)
    assert [p.name for p in paths] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = read_records(tmp_path)
    assert table.num_rows == 5
    assert list(iter_contents(table)) == [r.content for r in records]
    assert table["record_id"].to_pylist() == [r.record_id for r in records]


def test_empty_input_still_writes_a_readable_shard(tmp_path: Path) -> None:
    write_shards([], tmp_path, shard_size=10)
    assert read_records(tmp_path).num_rows == 0


def test_record_id_is_stable_and_depends_on_generator() -> None:
    assert _record("a").record_id == _record("a").record_id
    assert _record("a").record_id != _record("a", generator="openai").record_id


def test_public_m3t_file_without_provenance_reads_unchanged(tmp_path: Path) -> None:
    content = _content("pub")
    public = pa.table(
        {
            "qry": [[list(p) for p in content.qry]],
            "pos_text": [list(content.pos_text)],
            "pos_sentence": [list(content.pos_sentence)],
            "neg_text": [list(content.neg_text)],
            "qry_sentence": [content.qry_sentence],
            "qry_image_path": ["images/0001.jpg"],
            "pos_image_path": [""],
        }
    )
    path = tmp_path / "m3t_train.parquet"
    pq.write_table(public, path)
    table = read_records(path)
    assert table["generator"].to_pylist() == [None]
    assert table["turn_types"].to_pylist() == [list(M3T_TURN_TYPES)]
    assert next(iter_contents(table)) == content
    con = connect(path)
    assert con.execute("SELECT count(*) FROM turns").fetchone() == (7,)
    assert con.execute("SELECT max(turn_type) FROM turns").fetchone() == (6,)


def test_file_missing_an_m3t_column_is_rejected_by_name(tmp_path: Path) -> None:
    pq.write_table(pa.table({"qry": [[["x"]]], "pos_text": [["y"]]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: not an M3T file.*neg_text"):
        read_records(tmp_path / "bad.parquet")


def test_missing_records_location_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no records at"):
        read_records(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no parquet shards"):
        read_records(tmp_path)


def test_duckdb_views_count_turns_per_type_and_generator(tmp_path: Path) -> None:
    records = [_record("a"), _record("b"), _record("c", generator="openai")]
    write_shards(records, tmp_path, shard_size=2)
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM records").fetchone() == (3,)
    per_type = con.execute("SELECT turn_type, count(*) FROM turns GROUP BY 1 ORDER BY 1").fetchall()
    assert per_type == [(t, 3) for t in range(7)]
    per_generator = dict(con.execute("SELECT generator, count(*) FROM turns GROUP BY 1").fetchall())
    assert per_generator == {"scene_graph": 14, "openai": 7}
    turn3 = con.execute(
        "SELECT pos_text, neg_text, queries[1] FROM turns WHERE record_id = ? AND turn = 3",
        [records[1].record_id],
    ).fetchone()
    assert turn3 == ("answer 3 b", "wrong 3 b", "<|image_1|>\nq3 b")


def test_inspect_reports_counts_lengths_and_samples(tmp_path: Path) -> None:
    write_shards([_record("a"), _record("b")], tmp_path, shard_size=10)
    text = describe_records(tmp_path, samples=1)
    assert "2 records about 2 images" in text
    assert "classification" in text and "retrieval" in text
    assert "text lengths" in text and "qry_sentence" in text
    assert "answer 6 a" in text
