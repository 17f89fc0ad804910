"""The M3T record schema and its parquet shards: the contract between synthesis and training.

One row per image (METHODS.md §2). The M3T columns are those of the public M3T parquet::

    qry             list<list<string>>  k turns, each a list of query paraphrases
    pos_text        list<string>        k target texts
    pos_sentence    list<string>        k targets as full sentences
    neg_text        list<string>        k hard-negative targets
    qry_sentence    string              a description of the image
    qry_image_path  string              the query image, relative to the image root
    pos_image_path  string              the target image ("" when targets are text)

and the project adds provenance columns (:data:`PROVENANCE_COLUMNS`). Readers accept the public
file without them: missing provenance reads as null (``turn_types`` as M3T's order for k = 7).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from muco.io import atomic_write_bytes
from muco.synthesis.content import M3T_TURN_TYPES, M3TContent

SHARD_PATTERN = "part-{index:05d}.parquet"

M3T_FIELDS: tuple[pa.Field, ...] = (
    pa.field("qry", pa.list_(pa.list_(pa.string()))),
    pa.field("pos_text", pa.list_(pa.string())),
    pa.field("pos_sentence", pa.list_(pa.string())),
    pa.field("neg_text", pa.list_(pa.string())),
    pa.field("qry_sentence", pa.string()),
    pa.field("qry_image_path", pa.string()),
    pa.field("pos_image_path", pa.string()),
)
PROVENANCE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("record_id", pa.string()),
    pa.field("image_sha256", pa.string()),
    pa.field("turn_types", pa.list_(pa.int8())),
    pa.field("generator", pa.string()),
    pa.field("generator_model", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("sampling", pa.string()),  # JSON object of the sampling parameters
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
)
RECORD_SCHEMA = pa.schema([*PROVENANCE_FIELDS[:2], *M3T_FIELDS, *PROVENANCE_FIELDS[2:]])
M3T_COLUMNS = tuple(f.name for f in M3T_FIELDS)
PROVENANCE_COLUMNS = tuple(f.name for f in PROVENANCE_FIELDS)


@dataclass(frozen=True)
class M3TRecord:
    """One image's k turns plus where they came from."""

    record_id: str
    image_sha256: str
    qry_image_path: str
    content: M3TContent
    generator: str
    generator_model: str
    prompt_version: str
    sampling: dict[str, Any]
    created_at: datetime
    pos_image_path: str = ""

    def to_row(self) -> dict[str, Any]:
        content = self.content
        return {
            "record_id": self.record_id,
            "image_sha256": self.image_sha256,
            "qry": [list(p) for p in content.qry],
            "pos_text": list(content.pos_text),
            "pos_sentence": list(content.pos_sentence),
            "neg_text": list(content.neg_text),
            "qry_sentence": content.qry_sentence,
            "qry_image_path": self.qry_image_path,
            "pos_image_path": self.pos_image_path,
            "turn_types": list(content.turn_types),
            "generator": self.generator,
            "generator_model": self.generator_model,
            "prompt_version": self.prompt_version,
            "sampling": json.dumps(self.sampling, sort_keys=True),
            "created_at": self.created_at,
        }


def record_id(image_sha256: str, identity: dict[str, Any]) -> str:
    """A stable id: the same image under the same generator identity keeps its id across runs."""
    key = json.dumps({"image": image_sha256, **identity}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def write_shards(records: Iterable[M3TRecord], out_dir: Path, shard_size: int) -> list[Path]:
    """Write records as ``part-NNNNN.parquet`` shards of at most ``shard_size`` rows."""
    rows = [record.to_row() for record in records]
    return write_table_shards(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), out_dir, shard_size)


def write_table_shards(table: pa.Table, out_dir: Path, shard_size: int) -> list[Path]:
    """Write a table as ``part-NNNNN.parquet`` shards of at most ``shard_size`` rows.

    Each shard is written atomically. An empty table still writes one empty shard, so readers
    and DuckDB views always find the schema.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for index, start in enumerate(range(0, max(table.num_rows, 1), shard_size)):
        sink = pa.BufferOutputStream()
        pq.write_table(table.slice(start, shard_size), sink)
        path = out_dir / SHARD_PATTERN.format(index=index)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        paths.append(path)
    return paths


def shard_paths(path: Path) -> list[Path]:
    """The parquet files of a records location: one file, or every ``*.parquet`` in a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no records at {path}")
    files = sorted(path.glob("*.parquet"))
    shards = [f for f in files if not f.name.startswith(("rejections", "."))]
    if not shards:
        raise FileNotFoundError(f"no parquet shards in {path}")
    return shards


def read_records(path: Path) -> pa.Table:
    """Read our shards or a public M3T parquet file into one table with :data:`RECORD_SCHEMA`.

    Missing provenance columns become nulls; a public file's ``turn_types`` is filled with
    M3T's order when every row has 7 turns. A missing M3T column is an error naming the file.
    """
    tables = []
    for shard in shard_paths(path):
        table = pq.read_table(shard)
        missing = [c for c in M3T_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{shard}: not an M3T file, missing column(s) {missing}")
        tables.append(_conform(table, shard))
    return pa.concat_tables(tables)


def _conform(table: pa.Table, shard: Path) -> pa.Table:
    columns = {}
    for field in RECORD_SCHEMA:
        if field.name in table.column_names:
            try:
                columns[field.name] = table[field.name].cast(field.type)
            except pa.ArrowException as error:
                raise ValueError(
                    f"{shard}: column {field.name} is {table[field.name].type}, "
                    f"not readable as {field.type} ({error})"
                ) from None
        elif field.name == "turn_types":
            columns[field.name] = pa.array(
                [_default_turn_types(len(p)) for p in table["pos_text"].to_pylist()],
                type=field.type,
            )
        else:
            columns[field.name] = pa.nulls(table.num_rows, type=field.type)
    return pa.table(columns, schema=RECORD_SCHEMA)


def _default_turn_types(turns: int) -> list[int] | None:
    return list(M3T_TURN_TYPES) if turns == len(M3T_TURN_TYPES) else None


def iter_contents(table: pa.Table) -> Iterator[M3TContent]:
    """The :class:`M3TContent` of each row (rows without turn types get M3T's order)."""
    for row in table.select(
        ["qry", "pos_text", "pos_sentence", "neg_text", "qry_sentence", "turn_types"]
    ).to_pylist():
        turn_types = row["turn_types"] or list(range(len(row["pos_text"])))
        yield M3TContent.from_dict({**row, "turn_types": turn_types})


def connect(path: Path, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``records`` and ``turns`` over the shards at ``path``.

    ``records`` is one row per image, conformed to :data:`RECORD_SCHEMA` (public M3T files get
    null provenance); ``turns`` is one row per (record, turn) with that turn's fields.
    """
    con = con or duckdb.connect()
    files = [str(p) for p in shard_paths(path)]
    present = set(pq.read_schema(files[0]).names)
    select = ", ".join(
        field.name if field.name in present else f"NULL::{_duck_type(field)} AS {field.name}"
        for field in RECORD_SCHEMA
    )
    con.execute(
        f"CREATE OR REPLACE VIEW records AS SELECT {select} "
        f"FROM read_parquet({_sql_list(files)}, union_by_name = true)"
    )
    con.execute(
        """
        CREATE OR REPLACE VIEW turns AS
        SELECT r.record_id, r.image_sha256, r.generator, r.generator_model,
               t.i - 1 AS turn,
               coalesce(r.turn_types[t.i], CASE WHEN len(r.pos_text) = 7 THEN t.i - 1 END)
                   AS turn_type,
               r.qry[t.i] AS queries, r.pos_text[t.i] AS pos_text,
               r.pos_sentence[t.i] AS pos_sentence, r.neg_text[t.i] AS neg_text
        FROM records AS r,
             LATERAL (SELECT unnest(generate_series(1, len(r.pos_text))) AS i) AS t
        """
    )
    return con


def _duck_type(field: pa.Field) -> str:
    return {
        "string": "VARCHAR",
        "list<item: int8>": "TINYINT[]",
        "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    }[str(field.type)]


def _sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join("'" + item.replace("'", "''") + "'" for item in items) + "]"
