"""Tiny MMEB datasets in the public layouts, written with pyarrow, and tiny PNG images.

Each layout writer takes the rows of one dataset's ``test`` split and writes them under
``data/<folder>`` the way the public archive or the Hugging Face ``datasets`` library would.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

Row = dict[str, Any]

_TYPES = {
    "qry_inst": pa.string(),
    "qry_text": pa.string(),
    "qry_img_path": pa.string(),
    "tgt_inst": pa.string(),
    "tgt_text": pa.list_(pa.string()),
    "tgt_img_path": pa.list_(pa.string()),
}

# One name per layout load_mmeb reads: DATASET/test-*.parquet, DATASET/test/*.parquet,
# DATASET/data/test-*.parquet, save_to_disk's DATASET/test/, and that inside a DatasetDict root.
LAYOUTS = ("hub", "test_dir", "data_dir", "save_to_disk", "dataset_dict")


def write_png(path: Path, colour: tuple[int, int, int]) -> Path:
    """A 4x4 image of one colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def table(rows: Sequence[Row], columns: Sequence[str] = ()) -> pa.Table:
    """The rows as a table typed as the public files; columns: ``columns`` or the first row's."""
    names = list(columns or rows[0])
    schema = pa.schema([pa.field(name, _TYPES[name]) for name in names])
    return pa.Table.from_pylist(list(rows), schema=schema)


def write_dataset(
    data: Path,
    folder: str,
    rows: Sequence[Row],
    layout: str = "hub",
    shards: int = 1,
    columns: Sequence[str] = (),
) -> Path:
    """Write ``rows`` as the test split of ``data/folder`` in ``layout``, in ``shards`` files.

    The shards hold consecutive slices, so the rows read back in their order. ``columns`` is
    needed only when ``rows`` is empty.
    """
    root = data / folder
    size = max(1, -(-len(rows) // shards))
    parts = [table(rows[i * size : (i + 1) * size], columns) for i in range(shards)]
    if layout in ("hub", "test_dir", "data_dir"):
        _write_parquet(root, parts, layout)
    elif layout in ("save_to_disk", "dataset_dict"):
        _write_saved(root / "test", parts)
        if layout == "dataset_dict":
            (root / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    else:
        raise ValueError(f"unknown layout {layout}")
    return root


def _write_parquet(root: Path, parts: Sequence[pa.Table], layout: str) -> None:
    directory = {"hub": root, "test_dir": root / "test", "data_dir": root / "data"}[layout]
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "" if layout == "test_dir" else "test-"
    for index, part in enumerate(parts):
        name = f"{prefix}{index:05d}-of-{len(parts):05d}.parquet"
        pq.write_table(part, directory / name)


def _write_saved(split: Path, parts: Sequence[pa.Table]) -> None:
    """As ``Dataset.save_to_disk``: Arrow IPC stream shards listed in state.json."""
    split.mkdir(parents=True, exist_ok=True)
    names = [f"data-{index:05d}-of-{len(parts):05d}.arrow" for index in range(len(parts))]
    for name, part in zip(names, parts, strict=True):
        with pa.OSFile(str(split / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part)
    state = {
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": "0",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": "test",
    }
    (split / "state.json").write_text(json.dumps(state))
    (split / "dataset_info.json").write_text(json.dumps({"features": {}}))
