"""Query/positive/negative pair data for the pair-based stages (METHODS.md §1 stage 2, §3-5).

Two sources give the same :class:`Pair` items:

- **MMEB-train layout** (VLM2Vec's training set): one folder per subset (``ImageNet_1K/``,
  ``MSCOCO_t2i/``, ...), parquet files with the columns ``qry``, ``qry_image_path``, ``pos_text``,
  ``pos_image_path``, ``neg_text``, ``neg_image_path`` (the negative columns may be missing or
  empty); the hub stores a subset's splits as ``<split>-*.parquet`` (``original``,
  ``diverse_instruction``). Image paths are relative to an image root. Text uses ``<|image_1|>``
  as the image placeholder. MuCo stage 2 also needs a generated description of each image:
  an optional table (parquet, jsonl or json lines) with ``image_path`` and ``description``.
- **M3T records** (the default profile): each turn of a record is a pair: a query paraphrase
  with the record's image, the turn's positive text, its hard negative ``neg_text``, and the
  record's ``qry_sentence``, which is a generated description of exactly that image. So the
  synthesised records serve as stage-2 pair data with nothing else to generate.

Randomness (which paraphrase) comes from ``(seed, epoch, index)`` as in
:class:`muco.training.packing.PackedDataset`, so an item is reproducible on any rank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from muco.records import read_records

MMEB_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
MMEB_NEGATIVE_COLUMNS = ("neg_text", "neg_image_path")


@dataclass(frozen=True)
class Pair:
    """One training pair; texts keep their image placeholders, images are absolute paths.

    ``image_id`` identifies the query's image (its content hash where known): pairs of the same
    image are not each other's negatives. ``query_description`` / ``positive_description`` are
    generated descriptions of the query's / positive's image, where known.
    """

    query: str
    query_image: Path | None
    positive: str
    positive_image: Path | None
    negative: str | None
    negative_image: Path | None
    image_id: str
    query_description: str | None = None
    positive_description: str | None = None

    @property
    def has_negative(self) -> bool:
        return bool(self.negative) or self.negative_image is not None


class PairSource:
    """An indexable, epoch-seeded sequence of :class:`Pair` (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Pair:
        raise NotImplementedError

    def variants(self, index: int) -> list[Pair]:
        """Every form item ``index`` can take in any epoch (all query paraphrases)."""
        return [self[index]]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index, 2])

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")


class M3TPairs(PairSource):
    """Every turn of every M3T record as a pair (module docstring)."""

    def __init__(self, records: Path, image_root: Path, seed: int = 0) -> None:
        super().__init__(seed)
        self.table = read_records(records)
        self.image_root = Path(image_root)
        counts = pc.list_value_length(self.table["pos_text"]).to_numpy(zero_copy_only=False)
        self._record = np.repeat(np.arange(len(counts)), counts)
        self._turn = np.concatenate([np.arange(c) for c in counts]) if len(counts) else []

    def __len__(self) -> int:
        return len(self._record)

    def __getitem__(self, index: int) -> Pair:
        self._check(index)
        record, turn = self._locate(index)
        paraphrases = record["qry"][turn]
        choice = int(self.rng(index).integers(len(paraphrases)))
        return self._pair(record, turn, paraphrases[choice])

    def variants(self, index: int) -> list[Pair]:
        self._check(index)
        record, turn = self._locate(index)
        return [self._pair(record, turn, query) for query in record["qry"][turn]]

    def _locate(self, index: int) -> tuple[dict[str, Any], int]:
        return self.table.slice(int(self._record[index]), 1).to_pylist()[0], int(self._turn[index])

    def _pair(self, record: dict[str, Any], turn: int, query: str) -> Pair:
        query_image = _path(record["qry_image_path"], self.image_root)
        return Pair(
            query=query,
            query_image=query_image,
            positive=record["pos_text"][turn],
            positive_image=_path(record["pos_image_path"], self.image_root),
            negative=record["neg_text"][turn] if record["neg_text"] else None,
            negative_image=None,
            image_id=record.get("image_sha256") or f"path:{record['qry_image_path']}",
            query_description=record.get("qry_sentence") or None,
            # In M3T a positive image, if any, is the query's own image.
            positive_description=record.get("qry_sentence") or None,
        )


class MMEBTrainPairs(PairSource):
    """Pairs from an MMEB-train style folder (module docstring).

    Args:
        root: the folder with one sub-folder per subset.
        image_root: what the image paths are relative to.
        subsets: which subsets, in order; empty = every sub-folder holding parquet files.
        split: the hub split to read (``original``, ``diverse_instruction``); a subset without
            ``<split>*.parquet`` files is read whole.
        descriptions: optional parquet / jsonl table of ``image_path`` → ``description``.
    """

    def __init__(
        self,
        root: Path,
        image_root: Path,
        subsets: tuple[str, ...] = (),
        split: str = "original",
        descriptions: Path | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.root = Path(root)
        self.image_root = Path(image_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MMEB-train folder not found: {self.root}")
        names = subsets or tuple(
            sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.rglob("*.parquet")))
        )
        if not names:
            raise FileNotFoundError(f"{self.root}: no subset folder with parquet files")
        tables, subset_names = [], []
        for name in names:
            table = _read_subset(self.root / name, split)
            tables.append(table)
            subset_names += [name] * table.num_rows
        self.table = pa.concat_tables(tables)
        self.subset = subset_names
        self.descriptions = read_descriptions(descriptions) if descriptions else {}

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> Pair:
        self._check(index)
        row = self.table.slice(index, 1).to_pylist()[0]
        query_image = row["qry_image_path"] or ""
        return Pair(
            query=row["qry"] or "",
            query_image=_path(query_image, self.image_root),
            positive=row["pos_text"] or "",
            positive_image=_path(row["pos_image_path"], self.image_root),
            negative=row.get("neg_text") or None,
            negative_image=_path(row.get("neg_image_path"), self.image_root),
            image_id=(
                f"path:{query_image}" if query_image else f"row:{self.subset[index]}:{index}"
            ),
            query_description=self.descriptions.get(query_image),
            positive_description=self.descriptions.get(row["pos_image_path"] or ""),
        )


def _read_subset(folder: Path, split: str) -> pa.Table:
    files = sorted(folder.rglob(f"{split}*.parquet")) or sorted(folder.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet files under {folder}")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    missing = [c for c in MMEB_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{folder}: missing column(s) {missing} of the MMEB-train layout")
    columns = {c: table[c].cast(pa.string()) for c in MMEB_COLUMNS}
    for c in MMEB_NEGATIVE_COLUMNS:
        columns[c] = (
            table[c].cast(pa.string())
            if c in table.column_names
            else pa.nulls(table.num_rows, pa.string())
        )
    return pa.table(columns)


def read_descriptions(path: Path) -> dict[str, str]:
    """``image_path`` → ``description`` from a parquet file or JSON lines."""
    path = Path(path)
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    else:
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    try:
        return {row["image_path"]: row["description"] for row in rows}
    except KeyError as error:
        raise ValueError(
            f"{path}: descriptions need image_path and description ({error})"
        ) from None


def _path(relative: str | None, root: Path) -> Path | None:
    return root / relative if relative else None
