"""``muco inspect records DIR``: what a set of M3T records holds, through DuckDB."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path

from muco.records import connect
from muco.synthesis.content import TurnType


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def describe_records(path: Path, samples: int = 2) -> str:
    """Counts per turn type and generator, text length distributions and a few samples."""
    con = connect(path)
    out: list[str] = []
    (records, images) = con.execute(
        "SELECT count(*), count(DISTINCT coalesce(image_sha256, qry_image_path)) FROM records"
    ).fetchone()
    out.append(f"{records} records about {images} images in {path}")

    generators = con.execute(
        "SELECT coalesce(generator, '(unknown)'), coalesce(generator_model, '-'), "
        "coalesce(prompt_version, '-'), count(*) FROM records GROUP BY ALL ORDER BY 4 DESC"
    ).fetchall()
    out += ["", "per generator:", _table(generators, ["generator", "model", "prompt", "records"])]

    per_type = con.execute(
        "SELECT turn_type, count(*), round(avg(len(queries)), 2) FROM turns "
        "GROUP BY turn_type ORDER BY turn_type"
    ).fetchall()
    named = [(t, _type_name(t), n, q) for t, n, q in per_type]
    out += ["", "per turn type:", _table(named, ["type", "name", "turns", "paraphrases/turn"])]

    lengths = con.execute(
        """
        SELECT field, min(n), quantile_cont(n, 0.5)::INT, quantile_cont(n, 0.95)::INT, max(n)
        FROM (
            SELECT 'query' AS field, length(q) AS n FROM turns, unnest(queries) AS u(q)
            UNION ALL SELECT 'pos_text', length(pos_text) FROM turns
            UNION ALL SELECT 'pos_sentence', length(pos_sentence) FROM turns
            UNION ALL SELECT 'neg_text', length(neg_text) FROM turns
            UNION ALL SELECT 'qry_sentence', length(qry_sentence) FROM records
        ) GROUP BY field ORDER BY field
        """
    ).fetchall()
    out += [
        "",
        "text lengths (characters):",
        _table(lengths, ["field", "min", "p50", "p95", "max"]),
    ]

    rows = con.execute(
        f"SELECT record_id, qry_image_path, qry, pos_text, neg_text FROM records LIMIT {samples}"
    ).fetchall()
    for rid, image, qry, pos, neg in rows:
        out += ["", f"sample {rid or '(no id)'}  image {image}"]
        for turn, (queries, target, negative) in enumerate(zip(qry, pos, neg, strict=True)):
            query = " ".join(queries[0].split())
            out.append(
                textwrap.shorten(f"  [{turn}] {query}  ->  {target}  (not: {negative})", 160)
            )
    return "\n".join(out)


def _type_name(turn_type: int | None) -> str:
    return TurnType(turn_type).name.lower() if turn_type is not None else "(unknown)"


def main(argv: Sequence[str] | None = None, prog: str = "muco inspect") -> int:
    """``muco inspect records DIR``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    records = sub.add_parser("records", help="M3T record shards or a public M3T parquet file")
    records.add_argument("path", type=Path)
    records.add_argument("--samples", type=int, default=2)
    args = parser.parse_args(argv)
    print(describe_records(args.path, args.samples))
    return 0
