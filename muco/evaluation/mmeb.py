"""MMEB (v1): 36 image datasets, each query ranked against its own candidates (METHODS.md §6).

A base folder holds one sub-folder per dataset; each holds a ``test`` split with the columns
``qry_text``, ``qry_img_path``, ``tgt_text`` (candidates, the positive first) and
``tgt_img_path`` (one path per candidate, ``""`` for text candidates). Image paths are relative
to the image root (``image-tasks/`` in the public archive). The split may be stored in any of
the layouts in :data:`LAYOUTS`; everything is read with pyarrow.

Two public variants are read. In the original one the task instruction is part of
``qry_text``; the instruct variant keeps it in a separate ``qry_inst`` column (and, for some
datasets, a ``tgt_inst`` column for the candidates), which is prefixed to the text with one
space. That is how the instruction and the text sit together in the original variant's
``qry_text``, so a row split into instruction and text reads back as the same item.

The ``<|image_1|>`` placeholder marks where the image goes in a text; it is kept, and the
project's prompt template puts the image's tokens there (:func:`tidy_text`).

Scoring (:mod:`muco.evaluation.metrics`): hit@1 of normalised dot products, ties broken against
the positive; datasets are averaged with equal weight per meta-task, per IND/OOD group and
overall (:func:`summarise_mmeb`), as in the MMEB paper.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from muco.evaluation.metrics import DatasetScore
from muco.evaluation.tasks import EvalItem, RankingTask, index_items

BENCHMARK = "mmeb"
# Bump when reading or scoring changes in a way that makes results incomparable.
PROTOCOL_VERSION = "mmeb-v1:hit@1:ties-against-positive"

# --- the protocol tables (METHODS.md §6) ----------------------------------------------------------

# Dataset names are the public folder names. METHODS.md writes ImageNet-1K in the meta-task list
# and ImageNet_1K in the IND list; the public folder is ImageNet_1K, and names are matched by
# :func:`_normalise`, so either spelling (of a request or of a folder) finds it.
META_TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "classification": (
        "ImageNet_1K",
        "N24News",
        "HatefulMemes",
        "VOC2007",
        "SUN397",
        "Place365",
        "ImageNet-A",
        "ImageNet-R",
        "ObjectNet",
        "Country211",
    ),
    "vqa": (
        "OK-VQA",
        "A-OKVQA",
        "DocVQA",
        "InfographicsVQA",
        "ChartQA",
        "Visual7W",
        "ScienceQA",
        "VizWiz",
        "GQA",
        "TextVQA",
    ),
    "retrieval": (
        "VisDial",
        "CIRR",
        "VisualNews_t2i",
        "VisualNews_i2t",
        "MSCOCO_t2i",
        "MSCOCO_i2t",
        "NIGHTS",
        "WebQA",
        "FashionIQ",
        "Wiki-SS-NQ",
        "OVEN",
        "EDIS",
    ),
    "grounding": ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
}

# The 20 in-distribution datasets (their training splits are in MMEB-train); the other 16 are
# out-of-distribution.
IND_DATASETS: frozenset[str] = frozenset(
    {
        "ImageNet_1K",
        "N24News",
        "HatefulMemes",
        "VOC2007",
        "SUN397",
        "OK-VQA",
        "A-OKVQA",
        "DocVQA",
        "InfographicsVQA",
        "ChartQA",
        "Visual7W",
        "VisDial",
        "CIRR",
        "VisualNews_t2i",
        "VisualNews_i2t",
        "MSCOCO_t2i",
        "MSCOCO_i2t",
        "NIGHTS",
        "WebQA",
        "MSCOCO",
    }
)

GROUPS: tuple[str, ...] = ("ind", "ood")


@dataclass(frozen=True)
class MMEBDataset:
    """One dataset of the protocol: canonical name, meta-task and group (``ind``/``ood``)."""

    name: str
    meta_task: str
    group: str


DATASETS: tuple[MMEBDataset, ...] = tuple(
    MMEBDataset(name, meta_task, "ind" if name in IND_DATASETS else "ood")
    for meta_task, names in META_TASK_DATASETS.items()
    for name in names
)

# --- the test split's layouts ---------------------------------------------------------------------

LAYOUTS: tuple[str, ...] = (
    "DATASET/test-*.parquet",
    "DATASET/test/*.parquet",
    "DATASET/data/test-*.parquet",
    "DATASET/test/ saved with save_to_disk (state.json + data-*.arrow)",
)
_REQUIRED_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
# The instruct variant's instructions; a dataset's first file decides whether they are read.
_INSTRUCTION_COLUMNS = ("qry_inst", "tgt_inst")
_PLACEHOLDER = "<|image_1|>"
# A candidate as stored: (tgt_inst or "", tgt_text, tgt_img_path).
_Key = tuple[str, str, str]


@dataclass(frozen=True)
class _Split:
    """Where a dataset's test split lives: its files in order and how they are stored."""

    layout: str
    files: tuple[Path, ...]
    arrow_stream: bool


def dataset_info(name: str) -> MMEBDataset:
    """The protocol entry for ``name``, matched ignoring ``-``/``_`` and case.

    Raises ValueError naming ``name`` and the closest known name.
    """
    by_key = {_normalise(dataset.name): dataset for dataset in DATASETS}
    found = by_key.get(_normalise(name))
    if found is None:
        close = difflib.get_close_matches(_normalise(name), list(by_key), n=1, cutoff=0.6)
        hint = f"; did you mean {by_key[close[0]].name}?" if close else ""
        raise ValueError(f"MMEB has no dataset {name!r}{hint} (known: the 36 of METHODS.md §6)")
    return found


def tidy_text(text: str, has_image: bool) -> str:
    """``text`` stripped at both ends; ``<|image_1|>`` kept with an image, removed without.

    The prompt template (:func:`muco.model.templates.normalise_text`) puts the image's tokens
    where the placeholder stands, as VLM2Vec's Qwen2-VL evaluation does, so it stays in place.
    """
    if not has_image:
        text = text.replace(_PLACEHOLDER, "")
    return text.strip()


def load_mmeb(data: Path, images: Path, datasets: Sequence[str] = ()) -> list[RankingTask]:
    """Read MMEB's test splits into one :class:`RankingTask` per dataset (METHODS.md §6).

    ``data`` holds one folder per dataset, ``images`` is the image root the paths are relative
    to, ``datasets`` selects datasets by name (empty: all 36, in protocol order). Unknown names
    raise ValueError, missing folders FileNotFoundError, both before any file is read.
    """
    if not data.is_dir():
        raise FileNotFoundError(f"MMEB data folder not found: {data}")
    if not images.is_dir():
        raise FileNotFoundError(f"MMEB image root not found: {images}")
    chosen = list(dict.fromkeys(dataset_info(name) for name in datasets)) or list(DATASETS)
    folders = {dataset: _find_folder(data, dataset.name) for dataset in chosen}
    missing = [dataset.name for dataset, folder in folders.items() if folder is None]
    if missing:
        raise FileNotFoundError(f"MMEB datasets not found in {data}: {', '.join(missing)}")
    return [
        _read_task(dataset, folder, images.absolute())
        for dataset, folder in folders.items()
        if folder is not None
    ]


def summarise_mmeb(scores: Sequence[DatasetScore]) -> dict[str, float | int]:
    """Mean hit@1 (and mean chance) per meta-task, per IND/OOD group and overall.

    Each dataset present weighs the same, as in the MMEB paper (METHODS.md §6). Keys:
    ``"overall"`` and ``"overall/chance"``, ``"datasets"`` (how many were scored), and for each
    meta-task (``"meta_task/classification"``, ...) and group (``"ind"``, ``"ood"``) with a
    dataset present its mean plus ``"/chance"`` and ``"/datasets"``.
    """
    _check_scores(scores)
    summary: dict[str, float | int] = {"datasets": len(scores)}
    _add_mean(summary, "overall", scores)
    for meta_task in META_TASK_DATASETS:
        chosen = [score for score in scores if score.meta_task == meta_task]
        _add_subset(summary, f"meta_task/{meta_task}", chosen)
    for group in GROUPS:
        _add_subset(summary, group, [score for score in scores if score.group == group])
    return summary


# --- names and folders ----------------------------------------------------------------------------


def _normalise(name: str) -> str:
    return name.replace("-", "").replace("_", "").casefold()


def _find_folder(data: Path, name: str) -> Path | None:
    """The folder of dataset ``name`` in ``data``: spelled exactly, else spelled alike."""
    exact = data / name
    if exact.is_dir():
        return exact
    alike = sorted(
        child
        for child in data.iterdir()
        if child.is_dir() and _normalise(child.name) == _normalise(name)
    )
    if len(alike) > 1:
        raise ValueError(f"MMEB {name}: several folders match: {', '.join(map(str, alike))}")
    return alike[0] if alike else None


def _find_split(folder: Path) -> _Split:
    """The one layout the test split of ``folder`` is stored in (see :data:`LAYOUTS`)."""
    found = [
        split
        for split in (
            _parquet_split(LAYOUTS[0], folder.glob("test-*.parquet")),
            _parquet_split(LAYOUTS[1], (folder / "test").glob("*.parquet")),
            _parquet_split(LAYOUTS[2], (folder / "data").glob("test-*.parquet")),
            _saved_split(folder),
        )
        if split is not None
    ]
    if not found:
        raise FileNotFoundError(f"no MMEB test split in {folder}; looked for: {'; '.join(LAYOUTS)}")
    if len(found) > 1:
        # Reading one and ignoring the other could silently score a stale copy.
        layouts = "; ".join(split.layout for split in found)
        raise ValueError(f"several MMEB test splits in {folder}: {layouts}")
    return found[0]


def _parquet_split(layout: str, files: Iterable[Path]) -> _Split | None:
    ordered = tuple(sorted(path for path in files if path.is_file()))
    return _Split(layout, ordered, arrow_stream=False) if ordered else None


def _saved_split(folder: Path) -> _Split | None:
    """The split written by ``Dataset.save_to_disk`` in ``folder/test`` (or a DatasetDict's)."""
    dict_file = folder / "dataset_dict.json"
    if dict_file.is_file():
        splits = json.loads(dict_file.read_text()).get("splits", [])
        if "test" not in splits:
            raise ValueError(f"{dict_file} lists no test split (splits: {splits})")
    state_file = folder / "test" / "state.json"
    if not state_file.is_file():
        return None
    entries = json.loads(state_file.read_text()).get("_data_files")
    if not entries:
        raise ValueError(f"{state_file} lists no _data_files")
    # state.json, not a glob, is what save_to_disk writes as the order of the shards.
    files = tuple(folder / "test" / entry["filename"] for entry in entries)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{state_file} lists {path.name}, which does not exist")
    return _Split(LAYOUTS[3], files, arrow_stream=True)


# --- rows -----------------------------------------------------------------------------------------


def _image(images: Path, relative: str | None, where: str, column: str) -> str | None:
    """The absolute path of an image under ``images``, or None when ``relative`` is empty."""
    if not relative:
        return None
    path = images / relative
    if not path.is_file():
        raise FileNotFoundError(f"{where}, column {column}: image not found: {path}")
    return str(path)


def _schema(path: Path, split: _Split) -> pa.Schema:
    if split.arrow_stream:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).schema
    return pq.read_schema(path)


def _columns_of(split: _Split) -> tuple[str, ...]:
    """The columns to read: the required ones and the instructions the first file has."""
    names = _schema(split.files[0], split).names
    return (*_REQUIRED_COLUMNS, *(column for column in _INSTRUCTION_COLUMNS if column in names))


def _read_columns(path: Path, split: _Split, columns: Sequence[str], dataset: str) -> pa.Table:
    """``columns`` of one file of the split; a missing one is an error naming the file."""
    absent = [column for column in columns if column not in _schema(path, split).names]
    if absent:
        raise ValueError(f"MMEB {dataset}: {path} has no column {', '.join(absent)}")
    if split.arrow_stream:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all().select(list(columns))
    return pq.read_table(path, columns=list(columns))


def _join(instruction: str | None, text: str | None) -> str:
    """The instruct variant's instruction, one space, then the text (either may be empty)."""
    parts = ((instruction or "").strip(), (text or "").strip())
    return " ".join(part for part in parts if part)


def _item(text: str, image: str | None, where: str) -> EvalItem:
    text = tidy_text(text, has_image=image is not None)
    if not text and image is None:
        raise ValueError(f"{where}: no text and no image")
    return EvalItem(text=text, image=image)


def _query(row: dict[str, Any], where: str, images: Path) -> EvalItem:
    return _item(
        _join(row.get("qry_inst"), row["qry_text"]),
        _image(images, row["qry_img_path"], where, "qry_img_path"),
        f"{where}, query",
    )


def _candidate_keys(
    row: dict[str, Any], where: str, images: Path, items: dict[_Key, EvalItem]
) -> list[_Key]:
    """The raw candidates of one row, positive first; new ones are checked and added to ``items``.

    Candidate lists repeat the same labels and images across queries (up to 1000 per query), so
    each distinct raw candidate is cleaned and its image looked up only once, where it first
    occurs.
    """
    texts, paths = row["tgt_text"] or [], row["tgt_img_path"] or []
    if len(texts) != len(paths):
        raise ValueError(
            f"{where}: tgt_text has {len(texts)} candidates but tgt_img_path has {len(paths)}"
        )
    if not texts:
        raise ValueError(f"{where}: empty candidate list")
    instruction = row.get("tgt_inst") or ""
    keys = [(instruction, text or "", path or "") for text, path in zip(texts, paths, strict=True)]
    for position, key in enumerate(keys):
        if key not in items:
            items[key] = _item(
                _join(instruction, key[1]),
                _image(images, key[2], where, "tgt_img_path"),
                f"{where}, candidate {position}",
            )
    return keys


def _read_task(dataset: MMEBDataset, folder: Path, images: Path) -> RankingTask:
    split = _find_split(folder)
    columns = _columns_of(split)
    queries: list[EvalItem] = []
    candidate_keys: list[list[_Key]] = []
    items: dict[_Key, EvalItem] = {}
    for path in split.files:
        for row in _read_columns(path, split, columns, dataset.name).to_pylist():
            # Rows are numbered across the split's files, from 0, as the split reads.
            where = f"MMEB {dataset.name}: row {len(queries)} ({path.name})"
            queries.append(_query(row, where, images))
            candidate_keys.append(_candidate_keys(row, where, images, items))
    if not queries:
        raise ValueError(f"MMEB {dataset.name}: the test split in {folder} has no rows")
    # ``items`` is in first-seen order, so the pool is what index_items gives for all the lists;
    # raw candidates that clean to the same item share one index.
    pool, index = index_items(list(items.values()))
    position = {key: index[item] for key, item in items.items()}
    candidate_lists = tuple(
        np.array([position[key] for key in keys], dtype=np.int64) for keys in candidate_keys
    )
    return RankingTask(
        benchmark=BENCHMARK,
        name=dataset.name,
        meta_task=dataset.meta_task,
        group=dataset.group,
        queries=tuple(queries),
        candidates=pool,
        candidate_lists=candidate_lists,
        # MMEB lists the positive first. A negative identical to it (same text and image) gets
        # the same pool index and so counts as positive too: no embedding can tell them apart.
        positives=tuple(listed[:1] for listed in candidate_lists),
        ks=(1,),
        primary_k=1,
        metric="hit",
        extra={
            "protocol": PROTOCOL_VERSION,
            "variant": "instruct" if "qry_inst" in columns else "original",
        },
    )


# --- summary --------------------------------------------------------------------------------------


def _check_scores(scores: Sequence[DatasetScore]) -> None:
    """Reject what would make the means wrong: nothing, repeats, foreign or unknown scores."""
    if not scores:
        raise ValueError("no MMEB scores to summarise")
    repeated = sorted(name for name, n in Counter(s.dataset for s in scores).items() if n > 1)
    if repeated:
        raise ValueError(f"MMEB datasets scored more than once: {', '.join(repeated)}")
    for score in scores:
        where = f"{score.benchmark}/{score.dataset}"
        if score.benchmark != BENCHMARK or score.primary != "hit@1":
            raise ValueError(f"{where}: not an MMEB hit@1 score ({score.primary})")
        if score.meta_task not in META_TASK_DATASETS or score.group not in GROUPS:
            raise ValueError(
                f"{where}: unknown meta-task {score.meta_task!r} or group {score.group!r}"
            )


def _add_mean(summary: dict[str, float | int], key: str, scores: Sequence[DatasetScore]) -> None:
    summary[key] = float(np.mean([score.score for score in scores]))
    summary[f"{key}/chance"] = float(np.mean([score.chance for score in scores]))


def _add_subset(summary: dict[str, float | int], key: str, scores: Sequence[DatasetScore]) -> None:
    if scores:
        summary[f"{key}/datasets"] = len(scores)
        _add_mean(summary, key, scores)
