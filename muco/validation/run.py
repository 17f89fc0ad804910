"""A validation run: records in; valid records, quarantined records and a report out.

Every input record ends in exactly one of ``out_dir`` (passing every expectation) or
``quarantine_dir`` (with the names of the expectations it failed and a detail for each). A
shard whose columns cannot be read as M3T records is quarantined row by row as raw JSON under
the ``schema`` expectation, so even unreadable data is kept and counted, never dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from muco.config import DecodeLimits, LeakageConfig, ValidateConfig
from muco.records import RECORD_SCHEMA, read_records, shard_paths, write_table_shards
from muco.validation.checks import RecordChecks, check_records
from muco.validation.gate import GateResult, check_thresholds_exist, evaluate_gate
from muco.validation.leakage import LeakageDetector, load_eval_set
from muco.validation.suite import EXPECTATIONS, SCHEMA_EXPECTATION, run_suite

QUARANTINE_SCHEMA = pa.schema(
    [
        *RECORD_SCHEMA,
        pa.field("failed_expectations", pa.list_(pa.string())),
        pa.field("failure_details", pa.list_(pa.string())),
        pa.field("raw_record", pa.string()),  # JSON of a row whose shard was unreadable
    ]
)
_SPEC_BY_NAME = {spec.name: spec for spec in EXPECTATIONS}


@dataclass
class ValidationReport:
    """Counts of one run and the gate's verdict; ``metrics()`` is ``metrics/validation.json``."""

    records: int = 0
    quarantined: int = 0
    failed_by_expectation: Counter[str] = field(default_factory=Counter)
    table_failures: list[str] = field(default_factory=list)
    eval_sets: list[str] = field(default_factory=list)
    gate: GateResult = field(default_factory=lambda: GateResult(passed=False))

    @property
    def valid(self) -> int:
        return self.records - self.quarantined

    def metrics(self) -> dict[str, Any]:
        def rate(count: int) -> float:
            return round(count / self.records, 6) if self.records else 0.0

        expectations = {
            name: {
                "description": _SPEC_BY_NAME[name].description if name in _SPEC_BY_NAME else "",
                "failed": self.failed_by_expectation.get(name, 0),
                "fail_rate": rate(self.failed_by_expectation.get(name, 0)),
                "pass_rate": round(1 - rate(self.failed_by_expectation.get(name, 0)), 6),
            }
            for name in [SCHEMA_EXPECTATION, *_SPEC_BY_NAME]
        }
        return {
            "records": self.records,
            "valid": self.valid,
            "quarantined": self.quarantined,
            "reject_rate": rate(self.quarantined),
            "expectations": expectations,
            "table_failures": self.table_failures,
            "eval_sets": self.eval_sets,
            "gate": {"passed": self.gate.passed, "failures": self.gate.failures},
        }


def load_detector(cfg: LeakageConfig, limits: DecodeLimits) -> LeakageDetector | None:
    """Index the configured evaluation sets; None when there are none."""
    eval_sets = []
    for index, spec in enumerate(cfg.eval_sets):
        try:
            eval_sets.append(load_eval_set(spec, limits))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"validate.leakage.eval_sets[{index}]: {error}") from None
    if not eval_sets:
        return None
    return LeakageDetector(
        eval_sets, cfg.phash_max_distance, cfg.min_text_chars, cfg.colour_max_deviation
    )


def _detail(name: str, checks: RecordChecks, cfg: ValidateConfig) -> str:
    value = getattr(checks, _SPEC_BY_NAME[name].column)
    if isinstance(value, str):
        return f"{name}: {value}"
    if name == "turn_count":
        return f"{name}: {value} turns, expected {cfg.turns}"
    if name == "text_min_length":
        return f"{name}: a text of {value} characters, minimum {cfg.min_text_chars}"
    if name == "text_max_length":
        return f"{name}: a text of {value} characters, maximum {cfg.max_text_chars}"
    if isinstance(value, bool):
        return f"{name}: {_SPEC_BY_NAME[name].description}"
    return f"{name}: {value} offending text(s) or turn(s)"


def _read_shards(path: Path) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Readable records, and the raw rows of shards that are not M3T-shaped (with why)."""
    tables, unreadable = [], []
    for shard in shard_paths(path):
        try:
            tables.append(read_records(shard))
        except (ValueError, pa.ArrowException) as error:
            for row in pq.read_table(shard).to_pylist():
                unreadable.append({"raw_record": json.dumps(row, default=str), "why": str(error)})
    table = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    return table, unreadable


def validate_records(
    records_path: Path,
    image_root: Path,
    out_dir: Path,
    quarantine_dir: Path,
    cfg: ValidateConfig,
    limits: DecodeLimits,
    *,
    docs_dir: Path | None = None,
    shard_size: int = 1000,
) -> ValidationReport:
    """Validate every record at ``records_path``; write valid and quarantined shards."""
    check_thresholds_exist(cfg)
    table, unreadable = _read_shards(records_path)
    detector = load_detector(cfg.leakage, limits)
    rows = table.to_pylist()
    checks = check_records(rows, Path(image_root), cfg.turns, limits, detector)
    frame = pd.DataFrame([c.row() for c in checks], columns=list(RecordChecks.__dataclass_fields__))
    outcome = run_suite(frame, cfg, docs_dir)

    failures: list[list[str]] = [[] for _ in rows]
    report = ValidationReport(records=len(rows) + len(unreadable))
    for name, positions in outcome.failed_rows.items():
        report.failed_by_expectation[name] = len(positions)
        for position in positions:
            failures[position].append(name)
    report.failed_by_expectation[SCHEMA_EXPECTATION] = len(unreadable)
    report.table_failures = outcome.table_failures
    report.eval_sets = [spec.name or spec.path.name for spec in cfg.leakage.eval_sets]

    keep = [not names for names in failures]
    write_table_shards(table.filter(pa.array(keep, pa.bool_())), out_dir, shard_size)
    quarantined = [
        {
            **row,
            "failed_expectations": names,
            "failure_details": [_detail(name, check, cfg) for name in names],
            "raw_record": None,
        }
        for row, check, names in zip(rows, checks, failures, strict=True)
        if names
    ]
    quarantined += [
        {
            "failed_expectations": [SCHEMA_EXPECTATION],
            "failure_details": [f"{SCHEMA_EXPECTATION}: {item['why']}"],
            "raw_record": item["raw_record"],
        }
        for item in unreadable
    ]
    write_table_shards(
        pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA), quarantine_dir, shard_size
    )
    report.quarantined = len(quarantined)
    report.gate = evaluate_gate(
        report.records,
        report.quarantined,
        report.failed_by_expectation,
        report.table_failures,
        cfg,
    )
    return report
