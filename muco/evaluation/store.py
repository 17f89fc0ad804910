"""The evaluation results store: every evaluation run, kept for good in one DuckDB file.

Three tables, created on first write:

- ``runs``: one row per run (:class:`RunInfo`; ``settings`` as JSON text, ``created_at`` as a
  UTC ``TIMESTAMP``, ``seq`` the order in which runs were recorded);
- ``scores``: one row per dataset per metric (``grp`` is :attr:`DatasetScore.group`;
  ``ordinal`` keeps the order the scores were given in);
- ``summaries``: the run's aggregate numbers (``key``, ``value``; ``is_int`` restores counts).

Runs are only ever added: recording a run id twice is an error, so earlier numbers cannot be
overwritten. Query the file directly for anything not offered here, e.g.
``duckdb results/eval.duckdb "SELECT * FROM scores WHERE is_primary"``.

Concurrency: every function opens and closes its own connection. DuckDB lets one process at a
time hold a file for writing (several may hold it read-only), and each run is written in one
transaction, so two writers can never interleave or corrupt the file: the second waits. A busy
file (another process's connection, or in this process a connection opened with the other
read-only setting) is retried for up to :data:`LOCK_TIMEOUT_S` seconds, then reported as a
:class:`StoreBusyError` naming the holder's PID. A long-lived interactive session on the file
blocks writers for as long as it stays open. Every failure to answer is a :class:`StoreError`
(or ``FileNotFoundError`` for a missing file) with a message fit for a user.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from numbers import Integral
from pathlib import Path
from typing import Any

import duckdb

from muco.evaluation.metrics import DatasetScore

LOCK_TIMEOUT_S = 10.0
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 0.5

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, created_at TIMESTAMP NOT NULL,
        model TEXT NOT NULL, model_fingerprint TEXT NOT NULL, benchmark TEXT NOT NULL,
        protocol_version TEXT NOT NULL, data_hash TEXT NOT NULL, settings TEXT NOT NULL,
        label TEXT)""",
    """CREATE TABLE IF NOT EXISTS scores (
        run_id TEXT NOT NULL, ordinal INTEGER NOT NULL, benchmark TEXT NOT NULL,
        dataset TEXT NOT NULL, meta_task TEXT NOT NULL, grp TEXT NOT NULL, metric TEXT NOT NULL,
        value DOUBLE NOT NULL, is_primary BOOLEAN NOT NULL, queries BIGINT NOT NULL,
        chance DOUBLE NOT NULL, PRIMARY KEY (run_id, benchmark, grp, dataset, metric))""",
    """CREATE TABLE IF NOT EXISTS summaries (
        run_id TEXT NOT NULL, ordinal INTEGER NOT NULL, key TEXT NOT NULL,
        value DOUBLE NOT NULL, is_int BOOLEAN NOT NULL, PRIMARY KEY (run_id, key))""",
)
_RUN_COLUMNS = (
    "run_id, created_at, model, model_fingerprint, benchmark, protocol_version, data_hash, "
    "settings, label"
)
_LATEST = re.compile(r"latest(?:~(\d+))?")
_RUN_ID = re.compile(r"[\w.-]+")


class StoreError(Exception):
    """The results database cannot answer: unreadable, locked, or no such run."""


class RunRefError(StoreError, LookupError):
    """A run reference that names no run, or more than one."""


class StoreBusyError(StoreError):
    """The results database stayed locked by another connection for too long."""


def _utc_iso(value: datetime) -> str:
    """The one text form of a timestamp used everywhere: UTC, microseconds, ``+00:00``."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunInfo:
    """What was evaluated, how and when: everything that can change the numbers.

    ``created_at`` is normalised to UTC ISO-8601 with microseconds (a naive time is refused:
    its zone would be a guess). ``settings`` must be JSON-serialisable; tuples come back as
    lists after a round trip through the store. Use :meth:`new` to get a fresh id and time.
    """

    run_id: str
    created_at: str
    model: str
    model_fingerprint: str
    benchmark: str
    protocol_version: str
    data_hash: str
    settings: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        if not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"run_id must be letters, digits, '_', '.' or '-': {self.run_id!r}")
        if _LATEST.fullmatch(self.run_id):
            raise ValueError(f"run_id {self.run_id!r} would clash with the run reference syntax")
        try:
            created = datetime.fromisoformat(self.created_at)
        except ValueError:
            raise ValueError(f"created_at is not an ISO-8601 time: {self.created_at!r}") from None
        if created.tzinfo is None:
            raise ValueError(f"created_at needs a time zone (UTC): {self.created_at!r}")
        object.__setattr__(self, "created_at", _utc_iso(created))

    @classmethod
    def new(
        cls,
        *,
        model: str,
        model_fingerprint: str,
        benchmark: str,
        protocol_version: str,
        data_hash: str,
        settings: Mapping[str, Any] | None = None,
        label: str | None = None,
    ) -> RunInfo:
        """A run with a fresh 12-hex-digit id (48 random bits) stamped with the current time."""
        return cls(
            run_id=uuid.uuid4().hex[:12],
            created_at=_utc_iso(datetime.now(UTC)),
            model=model,
            model_fingerprint=model_fingerprint,
            benchmark=benchmark,
            protocol_version=protocol_version,
            data_hash=data_hash,
            settings=dict(settings or {}),
            label=label,
        )

    def describe(self) -> str:
        """One line naming the run for tables and messages."""
        label = f" [{self.label}]" if self.label else ""
        return f"{self.run_id}{label} {self.benchmark} {self.created_at} {self.model}"


def _is_busy(error: duckdb.Error) -> bool:
    """Whether ``error`` means another connection holds the file (worth waiting for)."""
    message = str(error)
    if isinstance(error, duckdb.IOException):
        return "Could not set lock" in message
    # In one process, read-only and read-write connections to one file cannot coexist.
    return isinstance(error, duckdb.ConnectionException) and "different configuration" in message


@contextmanager
def _connect(db: Path, *, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``db`` that is closed on exit; waits out short lock conflicts."""
    db = Path(db)
    if read_only and not db.exists():
        raise FileNotFoundError(f"results database {db} does not exist: no run recorded yet")
    if not read_only:
        db.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    pause = _RETRY_FIRST_S
    while True:
        try:
            con = duckdb.connect(str(db), read_only=read_only)
            break
        except duckdb.Error as error:
            if not _is_busy(error):
                raise StoreError(f"cannot open results database {db}: {error}") from error
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"results database {db} stayed locked for {LOCK_TIMEOUT_S:g} s: {error}"
                ) from error
            time.sleep(pause)
            pause = min(2 * pause, _RETRY_MAX_S)
    try:
        yield con
    finally:
        con.close()


def _has_runs_table(con: duckdb.DuckDBPyConnection) -> bool:
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'runs' AND schema_name = 'main'"
    ).fetchone()
    return bool(found and found[0])


def _require_run(con: duckdb.DuckDBPyConnection, db: Path, run_id: str) -> None:
    """Raise :class:`RunRefError` unless ``run_id`` is recorded (an id, not a reference)."""
    if (
        not _has_runs_table(con)
        or not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone()
    ):
        raise RunRefError(f"no run {run_id!r} in {db}")


def _check_scores(run: RunInfo, scores: Sequence[DatasetScore]) -> None:
    """Refuse scores the tables could not hold faithfully, before anything is written."""
    seen: set[tuple[str, str]] = set()
    for score in scores:
        where = f"{score.benchmark}/{score.group}/{score.dataset}"
        if score.benchmark != run.benchmark:
            raise ValueError(f"{where}: benchmark differs from the run's {run.benchmark!r}")
        if score.primary not in score.values:
            raise ValueError(f"{where}: primary metric {score.primary!r} has no value")
        if (score.group, score.dataset) in seen:
            raise ValueError(f"{where}: scored twice in one run")
        seen.add((score.group, score.dataset))


def _score_rows(run_id: str, scores: Sequence[DatasetScore]) -> list[tuple[Any, ...]]:
    rows = []
    for score in scores:
        for metric, value in score.values.items():
            rows.append(
                (
                    run_id,
                    len(rows),
                    score.benchmark,
                    score.dataset,
                    score.meta_task,
                    score.group,
                    metric,
                    float(value),
                    metric == score.primary,
                    int(score.queries),
                    float(score.chance),
                )
            )
    return rows


def record_run(
    db: Path,
    run: RunInfo,
    scores: Sequence[DatasetScore],
    summary: Mapping[str, float | int],
) -> None:
    """Add ``run`` with its per-dataset ``scores`` and ``summary`` to ``db`` in one transaction.

    Creates the file and tables when absent. Raises ``ValueError`` when ``run.run_id`` is
    already recorded (runs are never overwritten) or the scores are inconsistent.
    """
    _check_scores(run, scores)
    try:
        settings = json.dumps(run.settings, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"run {run.run_id}: settings are not JSON-serialisable: {error}") from None
    created = datetime.fromisoformat(run.created_at).replace(tzinfo=None)  # stored as UTC
    summary_rows = [
        (run.run_id, index, key, float(value), isinstance(value, Integral))
        for index, (key, value) in enumerate(summary.items())
    ]
    with _connect(db, read_only=False) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in _SCHEMA:
                con.execute(statement)
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run.run_id]).fetchone():
                raise ValueError(f"run {run.run_id} is already recorded in {db}")
            con.execute(
                f"INSERT INTO runs (seq, {_RUN_COLUMNS}) "
                "SELECT coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM runs",
                [
                    run.run_id,
                    created,
                    run.model,
                    run.model_fingerprint,
                    run.benchmark,
                    run.protocol_version,
                    run.data_hash,
                    settings,
                    run.label,
                ],
            )
            score_rows = _score_rows(run.run_id, scores)
            if score_rows:
                con.executemany(
                    "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", score_rows
                )
            if summary_rows:
                con.executemany("INSERT INTO summaries VALUES (?, ?, ?, ?, ?)", summary_rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _run_from_row(row: tuple[Any, ...]) -> RunInfo:
    run_id, created, model, fingerprint, benchmark, protocol, data_hash, settings, label = row
    return RunInfo(
        run_id=run_id,
        created_at=_utc_iso(created.replace(tzinfo=UTC)),
        model=model,
        model_fingerprint=fingerprint,
        benchmark=benchmark,
        protocol_version=protocol,
        data_hash=data_hash,
        settings=json.loads(settings),
        label=label,
    )


def list_runs(db: Path, benchmark: str | None = None) -> list[RunInfo]:
    """Every recorded run (of ``benchmark`` if given), newest first; [] for an empty file.

    Newest means latest ``created_at``; runs created at the same instant go by recording order.
    Raises ``FileNotFoundError`` when ``db`` does not exist.
    """
    with _connect(db, read_only=True) as con:
        if not _has_runs_table(con):
            return []
        where = "" if benchmark is None else "WHERE benchmark = ?"
        rows = con.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY created_at DESC, seq DESC",
            [] if benchmark is None else [benchmark],
        ).fetchall()
    return [_run_from_row(row) for row in rows]


def _nth_latest(runs: list[RunInfo], n: int, ref: str, scope: str) -> RunInfo:
    if n >= len(runs):
        raise RunRefError(f"{ref}: only {len(runs)} run(s) recorded {scope}")
    return runs[n]


def resolve_run(db: Path, ref: str, benchmark: str | None = None) -> RunInfo:
    """The run that ``ref`` names: a full id, a unique id prefix, ``latest`` or ``latest~N``.

    ``latest~N`` is the N-th run before the newest (``latest~0`` is ``latest``). With
    ``benchmark`` only that benchmark's runs are considered. Raises ``FileNotFoundError`` for
    a missing file and :class:`RunRefError` for an empty store, an unknown or ambiguous ref.
    """
    runs = list_runs(db, benchmark)
    scope = f"in {db}" if benchmark is None else f"for benchmark {benchmark!r} in {db}"
    if not runs:
        raise RunRefError(f"no run recorded {scope}")
    ref = ref.strip()
    latest = _LATEST.fullmatch(ref)
    if latest:
        return _nth_latest(runs, int(latest.group(1) or 0), ref, scope)
    if ref.startswith("latest~"):
        raise RunRefError(f"bad run reference {ref!r}: expected latest~N with N a whole number")
    exact = [run for run in runs if run.run_id == ref]
    if exact:
        return exact[0]
    matches = [run for run in runs if ref and run.run_id.startswith(ref)]
    if not matches:
        raise RunRefError(f"no run {ref!r} {scope} (see the runs table for ids)")
    if len(matches) > 1:
        names = ", ".join(run.run_id for run in matches)
        raise RunRefError(f"run prefix {ref!r} is ambiguous {scope}: {names}")
    return matches[0]


def previous_run(db: Path, benchmark: str, before_run_id: str) -> RunInfo | None:
    """The run of ``benchmark`` recorded just before ``before_run_id``, or ``None``.

    ``before_run_id`` must be a recorded run of that benchmark (else :class:`RunRefError`).
    """
    runs = list_runs(db, benchmark)
    for index, run in enumerate(runs):
        if run.run_id == before_run_id:
            return runs[index + 1] if index + 1 < len(runs) else None
    raise RunRefError(f"no run {before_run_id!r} for benchmark {benchmark!r} in {db}")


def load_scores(db: Path, run_id: str) -> list[DatasetScore]:
    """The per-dataset scores recorded for ``run_id``, in the order they were recorded."""
    with _connect(db, read_only=True) as con:
        _require_run(con, db, run_id)
        rows = con.execute(
            "SELECT benchmark, dataset, meta_task, grp, metric, value, is_primary, queries, "
            "chance FROM scores WHERE run_id = ? ORDER BY ordinal",
            [run_id],
        ).fetchall()
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for benchmark, dataset, meta_task, group, metric, value, primary, queries, chance in rows:
        entry = grouped.setdefault(
            (benchmark, group, dataset),
            {
                "benchmark": benchmark,
                "dataset": dataset,
                "meta_task": meta_task,
                "group": group,
                "values": {},
                "primary": metric,
                "queries": queries,
                "chance": chance,
            },
        )
        entry["values"][metric] = value
        if primary:
            entry["primary"] = metric
    return [DatasetScore(**entry) for entry in grouped.values()]


def load_summary(db: Path, run_id: str) -> dict[str, float | int]:
    """The summary recorded for ``run_id``, in the order it was given; counts stay ints."""
    with _connect(db, read_only=True) as con:
        _require_run(con, db, run_id)
        rows = con.execute(
            "SELECT key, value, is_int FROM summaries WHERE run_id = ? ORDER BY ordinal",
            [run_id],
        ).fetchall()
    return {key: int(value) if is_int else value for key, value, is_int in rows}


def load_run(db: Path, ref: str) -> tuple[RunInfo, list[DatasetScore], dict[str, float | int]]:
    """A run with its scores and summary: the ``baseline`` argument of ``write_report``."""
    run = resolve_run(db, ref)
    return run, load_scores(db, run.run_id), load_summary(db, run.run_id)
