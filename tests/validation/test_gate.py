"""The gate: thresholds at their value pass, just over fail, and the message has the numbers."""

from __future__ import annotations

import pytest

from muco.config import ConfigError, ValidateConfig
from muco.validation.gate import check_thresholds_exist, evaluate_gate

CFG = ValidateConfig(max_reject_rate=0.05, min_records=90, per_expectation={"unique_image": 0.02})


def test_reject_rate_exactly_at_threshold_passes_and_one_more_fails() -> None:
    assert evaluate_gate(100, 5, {}, [], CFG).passed
    result = evaluate_gate(100, 6, {}, [], CFG)
    assert not result.passed
    assert result.failures == [
        "reject rate 6.00% (6 of 100 records quarantined) exceeds validate.max_reject_rate 5.00%"
    ]


def test_minimum_valid_records() -> None:
    assert evaluate_gate(94, 4, {}, [], CFG).passed  # 90 valid, 4.3% rejected
    result = evaluate_gate(93, 4, {}, [], CFG)  # 89 valid
    assert result.failures == ["89 valid records, fewer than validate.min_records 90"]


def test_per_expectation_limit_at_and_over() -> None:
    assert evaluate_gate(100, 2, {"unique_image": 2}, [], CFG).passed
    result = evaluate_gate(100, 3, {"unique_image": 3}, [], CFG)
    assert result.failures == [
        "expectation unique_image failed on 3.00% (3 of 100 records), above "
        "validate.per_expectation.unique_image 2.00%"
    ]


def test_table_level_failure_fails_the_gate() -> None:
    result = evaluate_gate(100, 0, {}, ["schema: unexpected columns"], CFG)
    assert not result.passed and "schema" in result.failures[0]


def test_no_records_fails_on_minimum() -> None:
    assert not evaluate_gate(0, 0, {}, [], CFG).passed


def test_unknown_per_expectation_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"validate\.per_expectation: unknown .*unique_imgae"):
        check_thresholds_exist(ValidateConfig(per_expectation={"unique_imgae": 0.1}))
