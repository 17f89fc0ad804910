"""The gate: decide from the validation counts whether training may use the data.

A pure function of the counts and ``validate`` thresholds, so ``dvc repro`` (through the
stage's exit code) and Dagster (through a blocking asset check) stop for the same reasons and
report the same numbers. A rate exactly at its threshold passes; anything above fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from muco.config import ConfigError, ValidateConfig
from muco.validation.suite import EXPECTATION_NAMES


@dataclass(frozen=True)
class GateResult:
    """Whether the data may go on to training, and why not."""

    passed: bool
    failures: list[str] = field(default_factory=list)


def check_thresholds_exist(cfg: ValidateConfig) -> None:
    """Reject ``validate.per_expectation`` keys that name no expectation (typos must not pass)."""
    unknown = sorted(set(cfg.per_expectation) - set(EXPECTATION_NAMES))
    if unknown:
        raise ConfigError(
            f"validate.per_expectation: unknown expectation(s) {unknown}; "
            f"known: {', '.join(EXPECTATION_NAMES)}"
        )


def evaluate_gate(
    records: int,
    quarantined: int,
    failed_by_expectation: Mapping[str, int],
    table_failures: list[str],
    cfg: ValidateConfig,
) -> GateResult:
    """Apply the thresholds of ``cfg`` to the counts of one validation run."""
    failures = [f"table-level expectation failed: {failure}" for failure in table_failures]
    valid = records - quarantined
    rate = quarantined / records if records else 0.0
    if rate > cfg.max_reject_rate:
        failures.append(
            f"reject rate {rate:.2%} ({quarantined} of {records} records quarantined) exceeds "
            f"validate.max_reject_rate {cfg.max_reject_rate:.2%}"
        )
    if valid < cfg.min_records:
        failures.append(f"{valid} valid records, fewer than validate.min_records {cfg.min_records}")
    for name, limit in sorted(cfg.per_expectation.items()):
        failed = failed_by_expectation.get(name, 0)
        fail_rate = failed / records if records else 0.0
        if fail_rate > limit:
            failures.append(
                f"expectation {name} failed on {fail_rate:.2%} ({failed} of {records} records), "
                f"above validate.per_expectation.{name} {limit:.2%}"
            )
    return GateResult(passed=not failures, failures=failures)
