"""Champion promotion decisions and the versioned pointer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muco.evaluation.promotion import Champion, decide, headline_scores, promote, read_champion

METRIC = "scenes/test/overall"


def _champion(score: float) -> Champion:
    return Champion("models/champion", "aaa.dir", {METRIC: score}, "2026-01-01T00:00:00", "first")


def test_first_model_is_promoted() -> None:
    decision = decide({METRIC: 20.0}, None, METRIC, margin=1.0)
    assert decision.promote and "no champion yet" in decision.reason


def test_the_margin_must_be_exceeded() -> None:
    assert not decide({METRIC: 31.0}, _champion(30.0), METRIC, margin=1.0).promote
    assert decide({METRIC: 31.01}, _champion(30.0), METRIC, margin=1.0).promote
    worse = decide({METRIC: 25.0}, _champion(30.0), METRIC, margin=0.0)
    assert not worse.promote
    assert "25.00 does not beat the champion's 30.00" in worse.reason


def test_a_metric_the_candidate_lacks_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'mmeb/overall' is not among the scores \(scenes/x\)"):
        decide({"scenes/x": 1.0}, None, "mmeb/overall", margin=1.0)


def test_pointer_and_history_round_trip(tmp_path: Path) -> None:
    assert read_champion(tmp_path) is None
    promote(tmp_path, "models/champion", "aaa.dir", {METRIC: 30.0}, "first")
    second = promote(tmp_path, "models/champion", "bbb.dir", {METRIC: 40.0}, "better")
    assert read_champion(tmp_path) == second
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [entry["model_md5"] for entry in history] == ["aaa.dir", "bbb.dir"]
    (tmp_path / "champion.json").write_text("{}")
    with pytest.raises(ValueError, match="not a champion record"):
        read_champion(tmp_path)


def test_headline_scores_leave_out_chance_counts_and_the_baseline() -> None:
    metrics = {
        "scenes": {
            "summary": {"test/overall": 40.0, "test/overall/chance": 10.0, "test/datasets": 8}
        },
        "baseline": {"scenes": {"summary": {"test/overall": 11.0}}},
    }
    assert headline_scores(metrics) == {"scenes/test/overall": 40.0}
