"""`muco compare`: two recorded runs, dataset by dataset, with hand-computed deltas."""

from __future__ import annotations

from pathlib import Path

import pytest

from muco.cli import main
from muco.evaluation.compare import (
    ComparisonRow,
    SummaryDelta,
    compare_runs,
    compare_scores,
    compare_summaries,
    format_comparison,
)
from muco.evaluation.metrics import DatasetScore
from muco.evaluation.store import RunInfo, record_run


def score(dataset: str, meta_task: str, value: float, group: str = "ind") -> DatasetScore:
    return DatasetScore("mmeb", dataset, meta_task, group, {"hit@1": value}, "hit@1", 100, 10.0)


# Run A lacks OK-VQA; run B lacks VOC2007. Deltas are B - A.
SCORES_A = [
    score("VOC2007", "classification", 60.0),
    score("ImageNet-1K", "classification", 55.25),
    score("MSCOCO_t2i", "retrieval", 40.0, group="ood"),
]
SCORES_B = [
    score("MSCOCO_t2i", "retrieval", 47.5, group="ood"),
    score("ImageNet-1K", "classification", 54.0),
    score("OK-VQA", "VQA", 33.0),
]
SUMMARY_A = {"overall": 51.75, "queries": 300}
SUMMARY_B = {"overall": 44.8333, "queries": 300, "vqa": 33.0}


def make_run(run_id: str, minute: int, label: str) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        created_at=f"2025-03-01T12:{minute:02d}:00+00:00",
        model=f"models/{label}",
        model_fingerprint=f"fp-{label}",
        benchmark="mmeb",
        protocol_version="mmeb-v1",
        data_hash="abc",
        settings={"max_pixels": 3136},
        label=label,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "eval.duckdb"
    record_run(path, make_run("aaaa00000001", 0, "baseline"), SCORES_A, SUMMARY_A)
    record_run(path, make_run("bbbb00000002", 5, "trained"), SCORES_B, SUMMARY_B)
    return path


def test_rows_are_sorted_with_hand_computed_deltas() -> None:
    rows = compare_scores(SCORES_A, SCORES_B)
    assert [(r.meta_task, r.dataset) for r in rows] == [
        ("classification", "ImageNet-1K"),
        ("classification", "VOC2007"),
        ("retrieval", "MSCOCO_t2i"),
        ("VQA", "OK-VQA"),
    ]
    assert rows[0] == ComparisonRow(
        "mmeb", "ind", "ImageNet-1K", "classification", "hit@1", 55.25, 54.0
    )
    assert rows[0].delta == pytest.approx(-1.25)
    assert rows[2].delta == pytest.approx(7.5)
    assert (rows[1].value_a, rows[1].value_b, rows[1].delta) == (60.0, None, None)
    assert (rows[3].value_a, rows[3].value_b, rows[3].delta) == (None, 33.0, None)


def test_a_changed_headline_metric_is_not_compared_across_metrics() -> None:
    a = DatasetScore("m", "d", "t", "g", {"recall@5": 50.0}, "recall@5", 1, 1.0)
    b = DatasetScore("m", "d", "t", "g", {"recall@10": 70.0}, "recall@10", 1, 1.0)
    (row,) = compare_scores([a], [b])
    assert (row.metric, row.value_a, row.value_b, row.delta) == ("recall@5", 50.0, None, None)


def test_summary_deltas_keep_a_order_then_b_only_keys() -> None:
    assert compare_summaries(SUMMARY_A, SUMMARY_B) == [
        SummaryDelta("overall", 51.75, 44.8333),
        SummaryDelta("queries", 300, 300),
        SummaryDelta("vqa", None, 33.0),
    ]
    assert compare_summaries(SUMMARY_A, SUMMARY_B)[0].delta == pytest.approx(-6.9167)
    assert compare_summaries(SUMMARY_A, SUMMARY_B)[1].delta == 0


def test_compare_runs_reads_both_runs_from_the_store(db: Path) -> None:
    comparison = compare_runs(db, "latest~1", "latest")
    assert (comparison.run_a.label, comparison.run_b.label) == ("baseline", "trained")
    assert comparison.rows == compare_scores(SCORES_A, SCORES_B)
    assert comparison.summary == compare_summaries(SUMMARY_A, SUMMARY_B)


def test_format_comparison_is_an_aligned_table_with_the_summary_last(db: Path) -> None:
    text = format_comparison(compare_runs(db, "aaaa", "bbbb"))
    lines = text.splitlines()
    assert lines[0].startswith("A: aaaa00000001 [baseline] mmeb")
    assert lines[1].startswith("B: bbbb00000002 [trained] mmeb")
    table = lines[3:]
    assert table[0].split() == ["meta-task", "group", "dataset", "metric", "A", "B", "B-A"]
    imagenet = next(line for line in table if "ImageNet-1K" in line)
    assert imagenet.split()[-3:] == ["55.25", "54.00", "-1.25"]
    voc = next(line for line in table if "VOC2007" in line)
    assert voc.split()[-1] == "60.00"  # B and the delta are blank
    assert next(line for line in table if "OK-VQA" in line).split()[-1] == "33.00"
    # Right-aligned numbers: every value column ends at the same position.
    assert len({len(line) for line in (table[0], imagenet)}) == 1
    assert table[-3].split() == ["summary", "overall", "51.75", "44.83", "-6.92"]
    assert table[-2].split() == ["summary", "queries", "300", "300", "+0"]
    assert table[-1].split() == ["summary", "vqa", "33.00"]


def test_muco_compare_prints_the_table(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "latest~1", "latest", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "MSCOCO_t2i" in out and "+7.50" in out


def test_the_database_comes_from_the_environment(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MUCO_RESULTS_DB", str(db))
    assert main(["compare", "aaaa", "bbbb", "--benchmark", "mmeb"]) == 0
    assert "ImageNet-1K" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        (["zzzz", "latest"], "no run 'zzzz'"),
        (["latest~2", "latest"], "latest~2: only 2 run(s) recorded"),
        (["latest", "latest", "--benchmark", "m-beir"], "no run recorded for benchmark 'm-beir'"),
    ],
)
def test_a_bad_reference_exits_2_with_one_line(
    db: Path, refs: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", *refs, "--db", str(db)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("muco compare: error: ")
    assert message in captured.err and captured.err.count("\n") == 1


def test_a_missing_database_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "a", "b", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "does not exist" in capsys.readouterr().err
