"""The results store keeps every run, finds runs by reference and gives back what it was given."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from muco.evaluation import store
from muco.evaluation.metrics import DatasetScore
from muco.evaluation.store import (
    RunInfo,
    RunRefError,
    StoreBusyError,
    StoreError,
    list_runs,
    load_run,
    load_scores,
    load_summary,
    previous_run,
    record_run,
    resolve_run,
)


def make_run(
    run_id: str, minute: int, benchmark: str = "scenes-bench", label: str | None = None
) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        created_at=f"2025-03-01T12:{minute:02d}:00+00:00",
        model="runs/tiny/model",
        model_fingerprint="fp-" + run_id,
        benchmark=benchmark,
        protocol_version="scenes-1",
        data_hash="d41d8cd9",
        settings={"max_pixels": 3136, "template": "qwen2", "batch_size": 8, "dtypes": ["fp32"]},
        label=label,
    )


def make_scores(benchmark: str = "scenes-bench") -> list[DatasetScore]:
    # The same dataset name in two groups, as scenes-bench's seen/unseen splits have.
    return [
        DatasetScore(
            benchmark, "color", "classification", "test", {"hit@1": 71.0}, "hit@1", 40, 25
        ),
        DatasetScore(
            benchmark, "color", "classification", "test_unseen", {"hit@1": 52.5}, "hit@1", 40, 25
        ),
        DatasetScore(
            benchmark,
            "t2i",
            "retrieval",
            "test",
            {"hit@1": 30.0, "hit@5": 80.0, "hit@10": 95.0},
            "hit@5",
            20,
            12.5,
        ),
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results" / "eval.duckdb"


@pytest.fixture
def three_runs(db: Path) -> list[RunInfo]:
    """Runs recorded out of time order: listing must go by creation time."""
    runs = [make_run("a1b2c3d4e5f6", 0), make_run("a1ffee000000", 20), make_run("0badc0ffee00", 10)]
    for run in runs:
        record_run(db, run, make_scores(), {"overall": 50.0})
    return runs


def test_record_and_list_newest_first(db: Path, three_runs: list[RunInfo]) -> None:
    assert [run.run_id for run in list_runs(db)] == ["a1ffee000000", "0badc0ffee00", "a1b2c3d4e5f6"]
    assert list_runs(db)[0] == three_runs[1]  # settings and all round-trip


def test_runs_created_at_the_same_time_list_in_recording_order(db: Path) -> None:
    for run_id in ("first", "second"):
        record_run(db, make_run(run_id, 5), make_scores(), {})
    assert [run.run_id for run in list_runs(db)] == ["second", "first"]


def test_resolve_full_id_prefix_and_latest(db: Path, three_runs: list[RunInfo]) -> None:
    assert resolve_run(db, "0badc0ffee00").run_id == "0badc0ffee00"
    assert resolve_run(db, "a1b").run_id == "a1b2c3d4e5f6"
    assert resolve_run(db, "latest").run_id == "a1ffee000000"
    assert resolve_run(db, "latest~0").run_id == "a1ffee000000"
    assert resolve_run(db, "latest~1").run_id == "0badc0ffee00"
    assert resolve_run(db, "latest~2").run_id == "a1b2c3d4e5f6"


def test_ambiguous_prefix_names_the_candidates(db: Path, three_runs: list[RunInfo]) -> None:
    with pytest.raises(RunRefError, match="'a1' is ambiguous") as info:
        resolve_run(db, "a1")
    assert "a1ffee000000" in str(info.value) and "a1b2c3d4e5f6" in str(info.value)


def test_unknown_and_out_of_range_refs(db: Path, three_runs: list[RunInfo]) -> None:
    with pytest.raises(RunRefError, match="no run 'ffff'"):
        resolve_run(db, "ffff")
    with pytest.raises(RunRefError, match=r"latest~3: only 3 run\(s\) recorded"):
        resolve_run(db, "latest~3")
    with pytest.raises(RunRefError, match="expected latest~N"):
        resolve_run(db, "latest~one")


def test_resolve_within_one_benchmark(db: Path, three_runs: list[RunInfo]) -> None:
    other = make_run("abcdef000000", 30, benchmark="mmeb")
    record_run(db, other, make_scores("mmeb"), {})
    assert resolve_run(db, "latest").run_id == "abcdef000000"
    assert resolve_run(db, "latest", benchmark="scenes-bench").run_id == "a1ffee000000"
    with pytest.raises(RunRefError, match="for benchmark 'mmeb'"):
        resolve_run(db, "latest~1", benchmark="mmeb")
    assert [run.run_id for run in list_runs(db, "mmeb")] == ["abcdef000000"]


def test_empty_database_and_missing_file(db: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: no run recorded yet"):
        resolve_run(db, "latest")
    db.parent.mkdir(parents=True)
    duckdb.connect(str(db)).close()  # a valid file without tables
    assert list_runs(db) == []
    with pytest.raises(RunRefError, match="no run recorded in"):
        resolve_run(db, "latest")


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    bogus = tmp_path / "eval.duckdb"
    bogus.write_text("not a database\n" * 500)
    with pytest.raises(StoreError, match="cannot open results database"):
        list_runs(bogus)


def test_scores_and_summary_round_trip(db: Path) -> None:
    run, scores = make_run("r1", 0), make_scores()
    summary = {"overall": 51.1666, "meta_task/retrieval": 80.0, "queries": 100}
    record_run(db, run, scores, summary)
    assert load_scores(db, "r1") == scores
    assert [list(score.values) for score in load_scores(db, "r1")][2] == [
        "hit@1",
        "hit@5",
        "hit@10",
    ]
    loaded = load_summary(db, "r1")
    assert loaded == summary and list(loaded) == list(summary)
    assert isinstance(loaded["queries"], int) and isinstance(loaded["overall"], float)
    assert load_run(db, "r1") == (run, scores, summary)


def test_loading_an_unknown_run_id_is_an_error(db: Path, three_runs: list[RunInfo]) -> None:
    with pytest.raises(RunRefError, match="no run 'a1'"):
        load_scores(db, "a1")  # an id, not a prefix


def test_scores_table_has_one_row_per_dataset_and_metric(db: Path) -> None:
    record_run(db, make_run("r1", 0), make_scores(), {})
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT grp, dataset, metric, value, is_primary FROM scores ORDER BY ordinal"
        ).fetchall()
        settings = con.execute("SELECT settings::JSON ->> 'template' FROM runs").fetchone()
    assert len(rows) == 5
    assert rows[1] == ("test_unseen", "color", "hit@1", 52.5, True)
    assert [row[4] for row in rows[2:]] == [False, True, False]
    assert settings == ("qwen2",)


def test_a_run_is_never_overwritten(db: Path) -> None:
    record_run(db, make_run("r1", 0), make_scores(), {"overall": 1.0})
    with pytest.raises(ValueError, match="run r1 is already recorded"):
        record_run(db, make_run("r1", 9), make_scores(), {"overall": 2.0})
    assert load_summary(db, "r1") == {"overall": 1.0}
    assert len(list_runs(db)) == 1


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (make_scores("mmeb"), "benchmark differs"),
        (
            [DatasetScore("scenes-bench", "x", "vqa", "test", {"hit@1": 1.0}, "hit@5", 1, 1.0)],
            "primary metric 'hit@5' has no value",
        ),
        (make_scores()[:1] * 2, "scored twice"),
    ],
)
def test_inconsistent_scores_are_refused_before_writing(
    db: Path, scores: list[DatasetScore], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        record_run(db, make_run("r1", 0), scores, {})
    assert not db.exists()


def test_settings_must_be_json(db: Path) -> None:
    run = replace(make_run("r1", 0), settings={"path": Path("x")})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        record_run(db, run, make_scores(), {})


def test_previous_run_of_the_same_benchmark(db: Path, three_runs: list[RunInfo]) -> None:
    record_run(db, make_run("mmeb00000000", 15, benchmark="mmeb"), make_scores("mmeb"), {})
    assert previous_run(db, "scenes-bench", "a1ffee000000").run_id == "0badc0ffee00"
    assert previous_run(db, "scenes-bench", "a1b2c3d4e5f6") is None
    assert previous_run(db, "mmeb", "mmeb00000000") is None
    with pytest.raises(RunRefError, match="for benchmark 'mmeb'"):
        previous_run(db, "mmeb", "a1ffee000000")


def test_new_run_info_has_a_short_id_and_utc_time() -> None:
    first = RunInfo.new(
        model="m", model_fingerprint="f", benchmark="b", protocol_version="1", data_hash="h"
    )
    second = RunInfo.new(
        model="m", model_fingerprint="f", benchmark="b", protocol_version="1", data_hash="h"
    )
    assert len(first.run_id) == 12 and int(first.run_id, 16) >= 0
    assert first.run_id != second.run_id
    assert first.created_at.endswith("+00:00")


def test_created_at_is_normalised_to_utc_and_needs_a_zone() -> None:
    run = replace(make_run("r1", 0), created_at="2025-03-01T14:00:00+02:00")
    assert run.created_at == "2025-03-01T12:00:00.000000+00:00"
    with pytest.raises(ValueError, match="needs a time zone"):
        replace(make_run("r1", 0), created_at="2025-03-01T14:00:00")
    with pytest.raises(ValueError, match="clash with the run reference"):
        replace(make_run("r1", 0), run_id="latest")


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``db`` open for writing, started and holding on return."""
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_writer_waits_for_another_process_to_release_the_file(db: Path) -> None:
    holder = _hold_lock(db, 1.0)
    try:
        record_run(db, make_run("r1", 0), make_scores(), {})
    finally:
        holder.wait()
    assert [run.run_id for run in list_runs(db)] == ["r1"]


def test_a_lock_held_too_long_is_a_clear_error(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.2)
    holder = _hold_lock(db, 3.0)
    try:
        with pytest.raises(StoreBusyError, match=r"stayed locked .*Conflicting lock"):
            record_run(db, make_run("r1", 0), make_scores(), {})
    finally:
        holder.kill()
        holder.wait()


WRITE_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from muco.evaluation.metrics import DatasetScore
    from muco.evaluation.store import RunInfo, record_run
    run = RunInfo.new(model="m", model_fingerprint="f", benchmark="b", protocol_version="1",
                      data_hash="h")
    score = DatasetScore("b", "d", "t", "g", {"hit@1": 1.0}, "hit@1", 1, 1.0)
    record_run(Path(sys.argv[1]), run, [score], {"overall": 1.0})
    """
)


def test_concurrent_writers_from_several_processes_all_land(db: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITE_RUN, str(db)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()
    runs = list_runs(db)
    assert len({run.run_id for run in runs}) == 4
    assert all(len(load_scores(db, run.run_id)) == 1 for run in runs)
