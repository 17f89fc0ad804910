"""benchmark_scores: its metadata and the regression check, both ways."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetCheckSeverity

from orchestration.assets import (
    REGRESSION_CHECK,
    benchmark_scores_metadata,
    headline_scores,
    regression_check,
)


def _metrics(overall: float, vqa: float) -> dict:
    summary = {
        "test/datasets": 8,
        "test/overall": overall,
        "test/overall/chance": 10.8,
        "test/vqa": vqa,
        "test/vqa/chance": 11.7,
    }
    return {
        "scenes": {"summary": summary, "datasets": {"test/Scenes-Colour": vqa}},
        "baseline": {"scenes": {"summary": {**summary, "test/overall": 11.0}, "datasets": {}}},
    }


def test_headline_scores_are_means_not_chance_or_counts() -> None:
    assert headline_scores(_metrics(40.0, 30.0)) == {
        "scenes/test/overall": 40.0,
        "scenes/test/vqa": 30.0,
    }


def test_no_previous_materialisation_passes() -> None:
    (result,) = regression_check(_metrics(40.0, 30.0), {})
    assert result.check_name == REGRESSION_CHECK
    assert result.passed
    assert result.severity == AssetCheckSeverity.WARN
    assert "no previous materialisation" in result.metadata["details"].value


def test_a_drop_beyond_the_tolerance_warns_and_names_the_score() -> None:
    previous = {"headline": headline_scores(_metrics(40.0, 30.0))}
    (result,) = regression_check(_metrics(40.2, 25.0), previous)
    assert not result.passed
    assert result.severity == AssetCheckSeverity.WARN
    assert result.metadata["regressions"].value == 1
    assert "scenes/test/vqa: 30.00 -> 25.00 (-5.00)" in result.metadata["details"].value


def test_equal_or_better_scores_pass() -> None:
    previous = {"headline": headline_scores(_metrics(40.0, 30.0))}
    (result,) = regression_check(_metrics(40.0, 29.8), previous)
    assert result.passed
    assert result.metadata["compared"].value == 2


def test_metadata_tables_compare_with_the_baseline(tmp_path: Path) -> None:
    meta = benchmark_scores_metadata(tmp_path, _metrics(40.0, 30.0))
    assert meta["headline"].value == {"scenes/test/overall": 40.0, "scenes/test/vqa": 30.0}
    table = meta["scenes_summary"].value
    assert "| test/overall | 40.00 | 11.00 | +29.00 |" in table
    assert "| test/Scenes-Colour | 30.00 |" in meta["scenes_datasets"].value
