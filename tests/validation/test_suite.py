"""Each expectation of the suite, on a good row and on a row that breaks only that one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from muco.config import ValidateConfig
from muco.validation.checks import RecordChecks
from muco.validation.suite import EXPECTATION_NAMES, EXPECTATIONS, run_suite

CFG = ValidateConfig(turns=7, min_text_chars=2, max_text_chars=100)
GOOD = RecordChecks(
    n_turns=7,
    turn_shape_ok=True,
    turn_types_ok=True,
    empty_texts=0,
    shortest_text=2,
    longest_text=100,
    nonprintable_texts=0,
    query_equals_target=0,
    negative_equals_positive=0,
    image_path_problem=None,
    image_problem=None,
    image_hash_mismatch=None,
    duplicate_of=None,
    duplicate_image_of=None,
    leak=None,
)
# For each expectation, the value of its column that breaks it (and only it).
BAD_VALUES = {
    "turn_count": 6,
    "turn_shape": False,
    "turn_types": False,
    "non_empty_texts": 1,
    "text_min_length": 1,
    "text_max_length": 101,
    "printable_text": 1,
    "query_differs_from_target": 1,
    "negative_differs_from_positive": 2,
    "image_path_safe": "absolute_path: /etc/passwd",
    "image_decodable": "truncated: image file is truncated",
    "image_hash_matches": "record says 0123, file is 4567",
    "unique_record": "rec-1",
    "unique_image": "rec-1",
    "no_eval_leakage": "exact_image in bench: same bytes",
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory):
    rows = [GOOD]
    for spec in EXPECTATIONS:
        rows.append(dataclasses.replace(GOOD, **{spec.column: BAD_VALUES[spec.name]}))
    frame = pd.DataFrame([r.row() for r in rows])
    docs = tmp_path_factory.mktemp("docs") / "site"
    return run_suite(frame, CFG, docs), docs


def test_every_expectation_has_a_bad_case() -> None:
    assert set(BAD_VALUES) == set(EXPECTATION_NAMES)


@pytest.mark.parametrize("position,name", list(enumerate(EXPECTATION_NAMES, start=1)))
def test_good_row_passes_and_bad_row_fails_only_its_expectation(outcome, position, name) -> None:
    result, _ = outcome
    assert result.failed_rows[name] == [position]


def test_no_table_level_failure_and_data_docs_are_written(outcome) -> None:
    result, docs = outcome
    assert result.table_failures == []
    assert (Path(docs) / "index.html").exists()
    (page,) = (Path(docs) / "validations").rglob("*.html")
    assert "m3t_records" in page.read_text() and "n_turns" in page.read_text()


def test_a_missing_column_fails_the_schema_expectation() -> None:
    frame = pd.DataFrame([GOOD.row()]).drop(columns=["leak"])
    result = run_suite(frame.assign(extra=1), CFG, None)
    assert result.table_failures and result.table_failures[0].startswith("schema")
