"""benchmarks/target_context.py: the per-turn hit count by hand, the script on a tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "target_context.py"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    with load_script(SCRIPT) as module:
        yield module


def test_hits_are_counted_per_turn_type_and_by_text(script: ModuleType) -> None:
    # Rows 0-2 are turn type 0, rows 3-4 turn type 1.
    queries = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    targets = np.eye(3, dtype=np.float32)[[0, 2, 1, 1, 1]]
    texts = ["a", "b", "c", "red", "red"]
    turns = np.array([0, 0, 0, 1, 1])
    # Type 0: row 0 finds itself, rows 1 and 2 find each other (different texts): 1 of 3.
    # Type 1: both rows tie on identical vectors; the first row wins, and its text is "red"
    # like both positives, so a repeated answer is not a miss: 2 of 2.
    hits = script.hits_by_turn(queries, targets, texts, turns)
    assert hits == pytest.approx({0: 100 / 3, 1: 100.0})


def test_the_script_measures_a_tiny_model_in_three_settings(
    script: ModuleType, training_workspace: Path, tmp_path: Path
) -> None:
    root = training_workspace
    out = tmp_path / "context.json"
    argv = [
        *("--model", str(root / "backbone"), "--records", str(root / "m3t")),
        *("--images", str(root / "images"), "--out", str(out)),
        *("--count", "4", "--batch-size", "3", "--min-pixels", "3136", "--max-pixels", "3136"),
    ]
    assert script.main(argv) == 0

    (result,) = json.loads(out.read_text())["models"]
    assert result["records"] == 4
    assert set(result["hit_at_1"]) == {"in-context", "bare", "single-turn"}
    for hits in result["hit_at_1"].values():
        assert set(hits) == {
            "classification",
            "global_vqa_1",
            "global_vqa_2",
            "local_vqa_1",
            "local_vqa_2",
            "creative_vqa",
            "retrieval",
        }
        # Four records per type: every rate is a whole number of the four queries.
        assert all(value in (0.0, 25.0, 50.0, 75.0, 100.0) for value in hits.values())
