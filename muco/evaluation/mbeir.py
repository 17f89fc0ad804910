"""M-BEIR, UniIR's benchmark, read as ranking tasks (METHODS.md §6).

M-BEIR has 16 test configurations over 10 datasets. A configuration is one dataset queried in
one of UniIR's tasks. UniIR names each one ``<dataset>_task<id>`` (e.g. ``mscoco_task0``), and
:data:`CONFIGURATIONS` uses the same names. The public data root (the Hugging Face
``TIGER-Lab/M-BEIR`` dataset, read the way UniIR's ``src/common/mbeir_embedder.py`` and
``src/common/mbeir_retriever.py`` read it) holds:

- ``query/test/mbeir_<name>_test.jsonl``: one query per line (``qid``, ``query_txt``,
  ``query_img_path``, ``query_modality``, ``pos_cand_list``, ``task_id``, ...);
- ``cand_pool/local/mbeir_<pool>_cand_pool.jsonl``: the configuration's own pool (``did``,
  ``txt``, ``img_path``, ``modality``). ``<pool>`` is the configuration name, except for MSCOCO,
  whose pools are kept per split (``mscoco_task0_test``);
- ``cand_pool/global/mbeir_union_test_cand_pool.jsonl``: the union of the 16 local pools
  (5.6M candidates);
- ``qrels/test/mbeir_<name>_test_qrels.txt``: ``qid 0 did relevance task_id`` lines;
- ``instructions/query_instructions.tsv``: a header row, then one row per (dataset id, query
  modality, candidate modality) with columns ``query_modality``, ``cand_modality``,
  ``dataset_id`` and ``prompt_1`` ... ``prompt_4``;
- ``mbeir_images/...``: the images. Paths in the files are relative to the data root.

The protocol follows UniIR's evaluation:

- Every query of a configuration is ranked against one whole pool: the configuration's local
  pool, or the union pool shared by all 16 (``group`` ``"local"`` / ``"union"``). UniIR searches
  the whole union index with no filter on modality, and so does this reader: picking the right
  modality is part of the task.
- Positives are the qrels entries with relevance > 0. UniIR writes its qrels from each query's
  ``pos_cand_list``, so the two must name the same documents. When they differ, the query and
  qrels files do not belong together, and the reader raises an error.
- Cross-dataset positives: UniIR adds OVEN documents to InfoSeek's positives (and its eval code
  has a special case for both datasets). Those documents are in the union pool but not in the
  InfoSeek local pool. UniIR's local index cannot return them, so they cannot count there
  either. A positive from another dataset that the local pool lacks is therefore skipped. A
  positive of the query's own dataset that the pool lacks is an error, and so is any positive
  missing from the union pool.
- Query text is the configuration's instruction, a space, and ``query_txt``. UniIR samples one
  of the four instructions per query at random; this reader always uses the first non-empty
  one (``prompt_1``), so runs can be repeated. The text then goes through UniIR's normalisation
  (:func:`format_text`), and candidate text goes through it too.
- Recall@k is hit-in-top-k (UniIR's ``compute_recall_at_k``), scored by
  :mod:`muco.evaluation.metrics` with ties broken against the positive. The cut-offs are 1/5/10
  with R@5 as the headline, except Fashion200K and FashionIQ: 10/20/50 with R@10.
- Candidates keep pool order, duplicates included (UniIR indexes every ``did``).

``meta_task`` names UniIR's task in the paper's notation. ``q``/``c`` mean query/candidate and
``t``/``i`` mean text/image. UniIR's code numbers the tasks 0-8 (5 is unused), and the id is
kept in ``extra["task_id"]``:

=====  ==========================  =================  ==================
id     meta_task                   query modality     candidate modality
=====  ==========================  =================  ==================
0      ``qt->ci``                  text               image
1      ``qt->ct``                  text               text
2      ``qt->(ci,ct)``             text               image,text
3      ``qi->ct``                  image              text
4      ``qi->ci``                  image              image
6      ``(qi,qt)->ct``             image,text         text
7      ``(qi,qt)->ci``             image,text         image
8      ``(qi,qt)->(ci,ct)``        image,text         image,text
=====  ==========================  =================  ==================

Every error names the file and, where there is one, the 1-based line number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from muco.evaluation.metrics import DatasetScore
from muco.evaluation.tasks import EvalItem, RankingTask

BENCHMARK = "mbeir"
# Bump when a configuration, the instruction choice, the text normalisation or a positive rule
# changes: results are then not comparable.
PROTOCOL_VERSION = "mbeir-v1:uniir-test:prompt_1:recall-hit@k:ties-against-positive"

UNION_POOL_FILE = "cand_pool/global/mbeir_union_test_cand_pool.jsonl"
INSTRUCTIONS_FILE = "instructions/query_instructions.tsv"

Pool = Literal["local", "union"]

# UniIR's dataset ids: the prefix of every qid and did ("9:123" is an MSCOCO id).
DATASET_IDS: dict[str, int] = {
    "VisualNews": 0,
    "Fashion200K": 1,
    "WebQA": 2,
    "EDIS": 3,
    "NIGHTS": 4,
    "OVEN": 5,
    "INFOSEEK": 6,
    "FashionIQ": 7,
    "CIRR": 8,
    "MSCOCO": 9,
}

# UniIR's task id -> (query modality, candidate modality, meta_task). Modality strings are as
# in the data files.
TASKS: dict[int, tuple[str, str, str]] = {
    0: ("text", "image", "qt->ci"),
    1: ("text", "text", "qt->ct"),
    2: ("text", "image,text", "qt->(ci,ct)"),
    3: ("image", "text", "qi->ct"),
    4: ("image", "image", "qi->ci"),
    6: ("image,text", "text", "(qi,qt)->ct"),
    7: ("image,text", "image", "(qi,qt)->ci"),
    8: ("image,text", "image,text", "(qi,qt)->(ci,ct)"),
}

_QUERY_FIELDS = ("qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list")
_POOL_FIELDS = ("did", "txt", "img_path")


@dataclass(frozen=True)
class MBEIRConfiguration:
    """One M-BEIR test configuration: a dataset queried in one UniIR task."""

    dataset: str
    task_id: int
    ks: tuple[int, ...] = (1, 5, 10)
    primary_k: int = 5
    # MSCOCO's local pools are kept per split: mbeir_mscoco_task0_test_cand_pool.jsonl.
    pool_suffix: str = ""

    @property
    def name(self) -> str:
        """UniIR's name, e.g. ``mscoco_task0``; also the :class:`RankingTask` name."""
        return f"{self.dataset.lower()}_task{self.task_id}"

    @property
    def dataset_id(self) -> int:
        return DATASET_IDS[self.dataset]

    @property
    def query_modality(self) -> str:
        return TASKS[self.task_id][0]

    @property
    def candidate_modality(self) -> str:
        return TASKS[self.task_id][1]

    @property
    def meta_task(self) -> str:
        return TASKS[self.task_id][2]

    @property
    def query_file(self) -> str:
        return f"query/test/mbeir_{self.name}_test.jsonl"

    @property
    def qrels_file(self) -> str:
        return f"qrels/test/mbeir_{self.name}_test_qrels.txt"

    @property
    def local_pool_file(self) -> str:
        return f"cand_pool/local/mbeir_{self.name}{self.pool_suffix}_cand_pool.jsonl"


_FASHION: dict[str, Any] = {"ks": (10, 20, 50), "primary_k": 10}

# UniIR's 16 test configurations, in the order of its retrieval configs and results table.
CONFIGURATIONS: tuple[MBEIRConfiguration, ...] = (
    MBEIRConfiguration("VisualNews", 0),
    MBEIRConfiguration("MSCOCO", 0, pool_suffix="_test"),
    MBEIRConfiguration("Fashion200K", 0, **_FASHION),
    MBEIRConfiguration("WebQA", 1),
    MBEIRConfiguration("EDIS", 2),
    MBEIRConfiguration("WebQA", 2),
    MBEIRConfiguration("VisualNews", 3),
    MBEIRConfiguration("MSCOCO", 3, pool_suffix="_test"),
    MBEIRConfiguration("Fashion200K", 3, **_FASHION),
    MBEIRConfiguration("NIGHTS", 4),
    MBEIRConfiguration("OVEN", 6),
    MBEIRConfiguration("INFOSEEK", 6),
    MBEIRConfiguration("FashionIQ", 7, **_FASHION),
    MBEIRConfiguration("CIRR", 7),
    MBEIRConfiguration("OVEN", 8),
    MBEIRConfiguration("INFOSEEK", 8),
)
_BY_NAME = {config.name: config for config in CONFIGURATIONS}


@dataclass(frozen=True)
class _CandidatePool:
    """A pool read from ``path``: its items in file order and each ``did``'s position."""

    path: Path
    kind: Pool
    items: tuple[EvalItem, ...]
    positions: dict[str, int]


@dataclass
class _Query:
    """One query while it is being read. ``judged`` and ``positives`` are filled from qrels."""

    line: int
    qid: str
    item: EvalItem
    listed: frozenset[str]
    judged: set[str] = field(default_factory=set)
    positives: set[int] = field(default_factory=set)


# --- public API -----------------------------------------------------------------------------------


def load_mbeir(
    data: Path, pool: Pool = "local", configurations: Sequence[str] = ()
) -> list[RankingTask]:
    """The M-BEIR test configurations under the data root ``data`` as ranking tasks.

    ``configurations`` names a subset (UniIR's names, e.g. ``"cirr_task7"``) in the order
    wanted; empty means all 16. ``pool`` picks each configuration's local pool or the union pool.
    The union pool is read once and shared by every task. Every needed file is checked before
    anything is read, and one error names all the missing ones.
    """
    if pool not in ("local", "union"):
        raise ValueError(f"pool must be 'local' or 'union', got {pool!r}")
    root = Path(data).resolve()
    selected = _select(configurations)
    _require_files(root, selected, pool)
    # Instructions first, so that a missing one is reported before any pool is read.
    table = _read_instructions(root / INSTRUCTIONS_FILE)
    instructions = [_instruction(table, config, root / INSTRUCTIONS_FILE) for config in selected]
    union = _read_pool(root, UNION_POOL_FILE, "union") if pool == "union" else None
    tasks = []
    for config, instruction in zip(selected, instructions, strict=True):
        candidates = union if union is not None else _read_pool(root, config.local_pool_file, pool)
        tasks.append(_load_configuration(root, config, candidates, instruction))
    return tasks


def summarise_mbeir(scores: Sequence[DatasetScore]) -> dict[str, float | int]:
    """Mean headline Recall@k per pool, over all configurations and per task.

    Each configuration counts equally, as in UniIR's average. Keys are ``"<pool>/overall"``,
    ``"<pool>/<meta_task>"``, ``"<pool>/configurations"`` and ``"<pool>/queries"``, where
    ``<pool>`` is the score's group (``local`` or ``union``).
    """
    if not scores:
        raise ValueError("no M-BEIR scores to summarise")
    _check_scores(scores)
    summary: dict[str, float | int] = {}
    for group in dict.fromkeys(score.group for score in scores):
        in_group = [score for score in scores if score.group == group]
        summary[f"{group}/configurations"] = len(in_group)
        summary[f"{group}/queries"] = sum(score.queries for score in in_group)
        summary[f"{group}/overall"] = _mean(in_group)
        for meta_task in dict.fromkeys(score.meta_task for score in in_group):
            summary[f"{group}/{meta_task}"] = _mean(
                [score for score in in_group if score.meta_task == meta_task]
            )
    return summary


def format_text(text: str | None) -> str:
    """UniIR's text normalisation: drop carriage returns, strip whitespace and surrounding
    double quotes, capitalise the first letter, end with ``.`` unless it ends in ``.?!``."""
    text = (text or "").replace("\r", "").strip().strip('"')
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


# --- selection and files --------------------------------------------------------------------------


def _select(names: Sequence[str]) -> list[MBEIRConfiguration]:
    if isinstance(names, str):
        raise TypeError("configurations must be a sequence of names, not one string")
    if not names:
        return list(CONFIGURATIONS)
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise ValueError(f"unknown M-BEIR configurations {unknown}; known: {sorted(_BY_NAME)}")
    if len(set(names)) != len(names):
        raise ValueError(f"M-BEIR configurations named twice: {list(names)}")
    return [_BY_NAME[name] for name in names]


def _require_files(root: Path, selected: Sequence[MBEIRConfiguration], pool: Pool) -> None:
    # Checked up front, so that a missing qrels file does not show up only after a 2 GB union
    # pool has been read.
    needed = [INSTRUCTIONS_FILE] + ([UNION_POOL_FILE] if pool == "union" else [])
    for config in selected:
        needed += [config.query_file, config.qrels_file]
        if pool == "local":
            needed.append(config.local_pool_file)
    missing = [str(root / name) for name in needed if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"M-BEIR files missing: {', '.join(missing)}")


def _at(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _read_jsonl(path: Path, fields: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line, streamed (pools reach millions)."""
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{_at(path, number)}: malformed JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{_at(path, number)}: expected a JSON object")
            missing = [name for name in fields if name not in record]
            if missing:
                raise ValueError(f"{_at(path, number)}: missing field(s) {missing}")
            yield number, record


def _string(record: dict[str, Any], name: str, where: str) -> str:
    value = record[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _optional_string(record: dict[str, Any], name: str, where: str) -> str | None:
    value = record[name]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string or null, got {value!r}")
    return value or None


def _item(root: Path, text: str, image: str | None, where: str) -> EvalItem:
    """An item with the image as an absolute path; the image file must exist."""
    path = None
    if image is not None:
        path = os.path.join(root, image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: image {path} is missing")
    if not text and path is None:
        raise ValueError(f"{where}: neither text nor image")
    return EvalItem(text=text, image=path)


# --- pools ---------------------------------------------------------------------------------------


def _read_pool(root: Path, relative: str, kind: Pool) -> _CandidatePool:
    path = root / relative
    items: list[EvalItem] = []
    positions: dict[str, int] = {}
    for number, record in _read_jsonl(path, _POOL_FIELDS):
        where = _at(path, number)
        did = _string(record, "did", where)
        if did in positions:
            raise ValueError(f"{where}: did {did!r} appears twice in the pool")
        positions[did] = len(items)
        text = format_text(_optional_string(record, "txt", where))
        items.append(_item(root, text, _optional_string(record, "img_path", where), where))
    if not items:
        raise ValueError(f"{path}: empty candidate pool")
    return _CandidatePool(path=path, kind=kind, items=tuple(items), positions=positions)


def _position(did: str, pool: _CandidatePool, config: MBEIRConfiguration, where: str) -> int | None:
    """``did``'s index in ``pool``; ``None`` for another dataset's document that a local pool
    lacks (OVEN positives of InfoSeek queries), which UniIR's local index cannot return."""
    position = pool.positions.get(did)
    foreign = did.partition(":")[0] != str(config.dataset_id)
    if position is None and (pool.kind == "union" or not foreign):
        raise ValueError(f"{where}: did {did!r} is not in the candidate pool {pool.path}")
    return position


# --- instructions --------------------------------------------------------------------------------

InstructionKey = tuple[int, str, str]  # (dataset id, query modality, candidate modality)


def _read_instructions(path: Path) -> dict[InstructionKey, str]:
    """The first non-empty instruction of every row of the instructions TSV."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        columns = _instruction_columns(header, path)
        table: dict[InstructionKey, str] = {}
        for number, text in enumerate(handle, start=2):
            if not text.strip():
                continue
            key, instruction = _instruction_row(text, header, columns, _at(path, number))
            if key in table:
                raise ValueError(f"{_at(path, number)}: a second row for {key}")
            table[key] = instruction
    return table


def _instruction_columns(header: list[str], path: Path) -> tuple[int, int, int, list[int]]:
    required = ("dataset_id", "query_modality", "cand_modality")
    missing = [name for name in required if name not in header]
    prompts = [index for index, name in enumerate(header) if name.startswith("prompt")]
    if missing or not prompts:
        raise ValueError(
            f"{path}: header needs columns {list(required)} and prompt_1..., got {header}"
        )
    dataset, query_modality, cand_modality = (header.index(name) for name in required)
    return dataset, query_modality, cand_modality, prompts


def _instruction_row(
    text: str, header: list[str], columns: tuple[int, int, int, list[int]], where: str
) -> tuple[InstructionKey, str]:
    fields = text.rstrip("\r\n").split("\t")
    if len(fields) > len(header):
        raise ValueError(f"{where}: {len(fields)} columns, the header has {len(header)}")
    # Rows may stop short of the header when their last prompts are empty.
    fields += [""] * (len(header) - len(fields))
    dataset, query_modality, cand_modality, prompts = columns
    if not fields[dataset].strip().isdigit():
        raise ValueError(f"{where}: dataset_id {fields[dataset]!r} is not a number")
    instructions = [fields[index].strip() for index in prompts if fields[index].strip()]
    if not instructions:
        raise ValueError(f"{where}: no instruction in the row")
    key = (int(fields[dataset]), fields[query_modality].strip(), fields[cand_modality].strip())
    return key, instructions[0]


def _instruction(table: dict[InstructionKey, str], config: MBEIRConfiguration, path: Path) -> str:
    key = (config.dataset_id, config.query_modality, config.candidate_modality)
    if key not in table:
        raise ValueError(
            f"{path}: no instruction for dataset {config.dataset_id} ({config.dataset}), "
            f"{config.query_modality} -> {config.candidate_modality} (needed by {config.name})"
        )
    return table[key]


# --- one configuration ---------------------------------------------------------------------------


def _load_configuration(
    root: Path, config: MBEIRConfiguration, pool: _CandidatePool, instruction: str
) -> RankingTask:
    query_path = root / config.query_file
    qrels_path = root / config.qrels_file
    queries = _read_queries(root, config, pool, instruction)
    _read_qrels(qrels_path, config, pool, queries)
    positives = tuple(_positives(query, query_path, qrels_path, pool) for query in queries.values())
    return RankingTask(
        benchmark=BENCHMARK,
        name=config.name,
        meta_task=config.meta_task,
        group=pool.kind,
        queries=tuple(query.item for query in queries.values()),
        candidates=pool.items,
        candidate_lists=None,
        positives=positives,
        ks=config.ks,
        primary_k=config.primary_k,
        metric="recall",
        extra={
            "dataset": config.dataset,
            "task_id": str(config.task_id),
            "query_modality": config.query_modality,
            "candidate_modality": config.candidate_modality,
            "pool_file": str(pool.path.relative_to(root)),
            "instruction": instruction,
            "protocol": PROTOCOL_VERSION,
        },
    )


def _read_queries(
    root: Path, config: MBEIRConfiguration, pool: _CandidatePool, instruction: str
) -> dict[str, _Query]:
    path = root / config.query_file
    queries: dict[str, _Query] = {}
    for number, record in _read_jsonl(path, _QUERY_FIELDS):
        where = _at(path, number)
        qid = _string(record, "qid", where)
        if qid in queries:
            raise ValueError(f"{where}: qid {qid!r} already on line {queries[qid].line}")
        _check_task(record, config, where)
        text = format_text(f"{instruction} {_optional_string(record, 'query_txt', where) or ''}")
        item = _item(root, text, _optional_string(record, "query_img_path", where), where)
        listed = _listed_positives(record, where)
        for did in listed:
            _position(did, pool, config, where)
        queries[qid] = _Query(line=number, qid=qid, item=item, listed=listed)
    if not queries:
        raise ValueError(f"{path}: no queries")
    return queries


def _check_task(record: dict[str, Any], config: MBEIRConfiguration, where: str) -> None:
    # A query of another task means the file is not this configuration's, and its instruction
    # and positives would be wrong.
    if record["query_modality"] != config.query_modality:
        raise ValueError(
            f"{where}: query_modality {record['query_modality']!r}, but {config.name} has "
            f"{config.query_modality!r} queries"
        )
    if "task_id" in record and record["task_id"] != config.task_id:
        raise ValueError(f"{where}: task_id {record['task_id']!r}, expected {config.task_id}")


def _listed_positives(record: dict[str, Any], where: str) -> frozenset[str]:
    """The dids of ``pos_cand_list``: strings in the data, ``{"did": ...}`` on the dataset card."""
    listed = record["pos_cand_list"]
    if not isinstance(listed, list):
        raise ValueError(f"{where}: pos_cand_list must be a list")
    dids = [entry.get("did") if isinstance(entry, dict) else entry for entry in listed]
    if not all(isinstance(did, str) and did for did in dids):
        raise ValueError(f"{where}: pos_cand_list entries must be did strings, got {listed}")
    return frozenset(dids)


def _read_qrels(
    path: Path, config: MBEIRConfiguration, pool: _CandidatePool, queries: dict[str, _Query]
) -> None:
    """Record every positive judgement (relevance > 0) with its query, as UniIR's ``load_qrel``."""
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            fields = text.split()
            if not fields:
                continue
            where = _at(path, number)
            qid, did, relevance = _qrels_fields(fields, config, where)
            query = queries.get(qid)
            if query is None:
                raise ValueError(f"{where}: qid {qid!r} is not in {config.query_file}")
            if relevance <= 0:
                continue
            query.judged.add(did)
            position = _position(did, pool, config, where)
            if position is not None:
                query.positives.add(position)


def _qrels_fields(
    fields: list[str], config: MBEIRConfiguration, where: str
) -> tuple[str, str, int]:
    # Public qrels carry a fifth column, the task id; the TREC form without it is read as well.
    if len(fields) not in (4, 5):
        raise ValueError(f"{where}: expected 'qid 0 did relevance task_id', got {fields}")
    try:
        relevance = int(fields[3])
    except ValueError:
        raise ValueError(f"{where}: relevance {fields[3]!r} is not an integer") from None
    if len(fields) == 5 and fields[4] != str(config.task_id):
        raise ValueError(f"{where}: task id {fields[4]!r}, expected {config.task_id}")
    return fields[0], fields[2], relevance


def _positives(
    query: _Query, query_path: Path, qrels_path: Path, pool: _CandidatePool
) -> np.ndarray:
    where = _at(query_path, query.line)
    if query.listed != query.judged:
        raise ValueError(
            f"{where}: pos_cand_list {sorted(query.listed)} disagrees with the positives of "
            f"{query.qid!r} in {qrels_path}: {sorted(query.judged)}"
        )
    if not query.positives:
        raise ValueError(f"{where}: no positive of {query.qid!r} is in the pool {pool.path}")
    return np.array(sorted(query.positives), dtype=np.int64)


# --- summary --------------------------------------------------------------------------------------


def _check_scores(scores: Sequence[DatasetScore]) -> None:
    seen: set[tuple[str, str]] = set()
    for score in scores:
        config = _BY_NAME.get(score.dataset)
        if score.benchmark != BENCHMARK or config is None:
            raise ValueError(f"not an M-BEIR configuration: {score.benchmark}/{score.dataset}")
        if score.primary != f"recall@{config.primary_k}":
            raise ValueError(
                f"{score.dataset}: headline {score.primary}, M-BEIR's is recall@{config.primary_k}"
            )
        if (score.group, score.dataset) in seen:
            raise ValueError(f"{score.dataset} scored twice on the {score.group} pool")
        seen.add((score.group, score.dataset))


def _mean(scores: Sequence[DatasetScore]) -> float:
    return float(np.mean([score.score for score in scores]))
