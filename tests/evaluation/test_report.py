"""The evaluation report: markdown with the numbers, and PNGs that are the same bytes every time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from muco.evaluation.metrics import DatasetScore
from muco.evaluation.report import (
    meta_task_means,
    summary_markdown_table,
    write_report,
)
from muco.evaluation.store import RunInfo


def score(
    dataset: str, meta_task: str, group: str, value: float, chance: float = 25.0
) -> DatasetScore:
    return DatasetScore(
        "scenes-bench", dataset, meta_task, group, {"hit@1": value}, "hit@1", 40, chance
    )


SCORES = [
    score("color", "classification", "test", 71.0),
    score("shape", "classification", "test", 64.5),
    score("count", "VQA", "test", 42.25, chance=20.0),
    score("color", "classification", "test_unseen", 50.0),
    score("count", "VQA", "test_unseen", 30.0, chance=20.0),
    DatasetScore(
        "scenes-bench", "t2i", "retrieval", "test", {"hit@1": 35.0, "hit@5": 82.0}, "hit@1", 40, 2.5
    ),
]
SUMMARY = {"overall": 48.79, "group/test_unseen": 40.0, "queries": 240}
BASELINE_SCORES = [
    score("color", "classification", "test", 30.0),
    score("count", "VQA", "test", 22.0, chance=20.0),
    score("size", "VQA", "test", 21.0, chance=20.0),
]
BASELINE_SUMMARY = {"overall": 24.5, "queries": 120}


def make_run(run_id: str, label: str, settings: dict[str, object]) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        created_at="2025-03-01T12:00:00+00:00",
        model=f"models/{label}",
        model_fingerprint=f"fp-{label}",
        benchmark="scenes-bench",
        protocol_version="scenes-1",
        data_hash="d41d8cd9",
        settings=settings,
        label=label,
    )


RUN = make_run("bbbb00000002", "trained", {"max_pixels": 3136, "template": "qwen2"})
BASELINE_RUN = make_run("aaaa00000001", "baseline", {"max_pixels": 1568, "template": "qwen2"})
BASELINE = (BASELINE_RUN, BASELINE_SCORES, BASELINE_SUMMARY)


def decode(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    return image


def test_report_without_baseline(tmp_path: Path) -> None:
    written = write_report(tmp_path / "report", RUN, SCORES, SUMMARY)
    assert [path.name for path in written] == ["README.md", "meta_tasks.png"]
    text = written[0].read_text(encoding="utf-8")
    assert "run bbbb00000002" in text and "| template | qwen2 |" in text
    assert "| overall | 48.79 |" in text and "| queries | 240 |" in text
    assert "| classification | test_unseen | color | hit@1 | 50.00 | 25.00 | 40 |" in text
    assert "| retrieval | test | t2i | hit@1 | 35.00 | 2.50 | 40 | hit@5 82.00 |" in text
    assert "![mean score against chance per meta-task](meta_tasks.png)" in text
    assert "baseline" not in text
    assert decode(written[1]).format == "PNG"


def test_report_with_baseline_shows_the_difference(tmp_path: Path) -> None:
    written = write_report(tmp_path, RUN, SCORES, SUMMARY, baseline=BASELINE)
    assert [path.name for path in written] == ["README.md", "meta_tasks.png", "baseline.png"]
    text = written[0].read_text(encoding="utf-8")
    assert "| overall | 48.79 | 24.50 | +24.29 |" in text
    assert "| queries | 240 | 120 | +120 |" in text
    assert "| group/test_unseen | 40.00 |  |  |" in text
    assert "## Against the baseline: run aaaa00000001 (baseline)" in text
    # Only what differs is listed: the pixel limit, the model, not the template.
    assert "| setting max_pixels | 1568 | 3136 |" in text
    assert "| model | models/baseline | models/trained |" in text
    assert "setting template" not in text
    assert "| classification | test | color | hit@1 | 71.00 | 30.00 | +41.00 |" in text
    assert "| VQA | test | size | hit@1 |  | 21.00 |  |" in text
    assert "| classification | test_unseen | color | hit@1 | 50.00 |  |  |" in text
    assert decode(written[2]).size[1] > decode(written[1]).size[1]  # one bar pair per dataset


def test_pngs_are_the_same_bytes_on_every_render(tmp_path: Path) -> None:
    first = write_report(tmp_path / "one", RUN, SCORES, SUMMARY, baseline=BASELINE)
    second = write_report(tmp_path / "two", RUN, SCORES, SUMMARY, baseline=BASELINE)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert b"Software" not in first[1].read_bytes()


def test_a_report_without_baseline_removes_an_old_baseline_chart(tmp_path: Path) -> None:
    write_report(tmp_path, RUN, SCORES, SUMMARY, baseline=BASELINE)
    (tmp_path / "notes.txt").write_text("kept")
    write_report(tmp_path, RUN, SCORES, SUMMARY)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "meta_tasks.png",
        "notes.txt",
    ]


def test_one_panel_per_group(tmp_path: Path) -> None:
    two_groups = decode(write_report(tmp_path / "a", RUN, SCORES, SUMMARY)[1])
    one_group = [s for s in SCORES if s.group == "test"]
    single = decode(write_report(tmp_path / "b", RUN, one_group, SUMMARY)[1])
    assert two_groups.size[0] == 2 * single.size[0]


def test_meta_task_means_are_unweighted_over_datasets() -> None:
    means = meta_task_means(SCORES)
    assert list(means) == ["test", "test_unseen"]
    assert list(means["test"]) == ["classification", "VQA", "retrieval"]
    assert means["test"]["classification"] == pytest.approx((67.75, 25.0))
    assert means["test_unseen"]["VQA"] == pytest.approx((30.0, 20.0))


def test_summary_table_alone_and_against_a_baseline() -> None:
    assert summary_markdown_table({"overall": 50.0, "queries": 10}) == (
        "| summary | value |\n| --- | ---: |\n| overall | 50.00 |\n| queries | 10 |"
    )
    table = summary_markdown_table({"overall": 50.0}, {"overall": 45.5, "old|key": 1.0})
    assert table.splitlines()[2:] == [
        "| overall | 50.00 | 45.50 | +4.50 |",
        "| old\\|key |  | 1.00 |  |",
    ]


def test_no_scores_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no dataset scores"):
        write_report(tmp_path, RUN, [], SUMMARY)
