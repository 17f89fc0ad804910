"""benchmarks/methods.py at a tiny scale: equal-compute plans, and two methods trained through
the train stage and scored on scenes-bench, written as JSON rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from script_loader import load_script

from muco.config import (
    BackboneConfig,
    ImagesConfig,
    SynthesizeConfig,
    TinyBackboneConfig,
    TrainConfig,
    parse_params,
)
from muco.images.pool import build_pool
from muco.model.backbone import prepare_backbone
from muco.synthesis.generators import build_generator
from muco.synthesis.runner import synthesize

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
TINY = {"hidden_size": 32, "vocab_size": 512}
TRAIN = {
    "turns": 7,
    "global_batch_size": 2,
    "micro_batch_size": 2,
    "lr": 0.001,
    "warmup_steps": 1,
    "temperature": 0.05,
    "gradient_checkpointing": False,
    "finetune": {"mode": "full", "freeze_vision": False},
    "deepspeed": {"zero_stage": 2},
    "log_every_steps": 1,
}


@pytest.fixture(scope="module")
def script(repo_root: Path) -> Iterator[ModuleType]:
    with load_script(repo_root / "benchmarks" / "methods.py") as module:
        yield module


@pytest.fixture(scope="module")
def workspace(script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A scene pool with held-out splits (56 px), scene-graph records of its train split, and
    a tiny backbone (hidden 32), as the default profile's three inputs."""
    root = tmp_path_factory.mktemp("methods")
    images = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": 56,
                "counts": {"train": 16, "test": 12, "test_unseen": 12},
            }
        }
    )
    build_pool(images, root / "images")
    cfg = SynthesizeConfig()
    synthesize(root / "images", root / "m3t", cfg, build_generator(cfg), root / "cache")
    prepare_backbone(BackboneConfig(tiny=TinyBackboneConfig(**TINY), **PIXELS), root / "backbone")
    return script.Workspace(root / "images", root / "m3t", root / "backbone")


def test_every_method_gets_the_same_steps_and_pairs_per_step(script: ModuleType) -> None:
    train = TrainConfig.model_validate({"turns": 7, "global_batch_size": 4, "micro_batch_size": 2})
    for method, stages in script.METHODS.items():
        entries = script.stage_entries(method, 9, train)
        assert [entry["method"] for entry in entries] == list(stages)
        assert sum(entry["max_steps"] for entry in entries) == 9
        for entry in entries:
            per_item = 1 if entry["method"] in script.RECORD_STAGES else 7
            # G records of k turns, or G * k pairs: 28 pairs per step in every stage.
            assert entry["global_batch_size"] * (7 // per_item) == 28
            assert entry["micro_batch_size"] == 2 * per_item
    assert script.split_steps(9, 2) == [4, 5]
    with pytest.raises(ValueError, match="cannot be split"):
        script.split_steps(1, 2)


def test_missing_inputs_are_named(script: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "records").mkdir()
    missing = script.Workspace(tmp_path / "images", tmp_path / "records", tmp_path / "b").missing()
    assert len(missing) == 3
    assert "the scene pool" in missing[0] and "no parquet shard" in missing[2]


@pytest.mark.slow  # about a minute: two trainings and two evaluations
def test_two_methods_train_and_are_scored_into_json_rows(
    script: ModuleType, workspace: Any, tmp_path: Path
) -> None:
    params = parse_params(
        {
            "backbone": {"source": "tiny", "tiny": TINY, **PIXELS},
            "train": TRAIN,
            "evaluate": {"batch_size": 16},
        }
    )
    out = tmp_path / "methods.json"
    script.benchmark(["muco", "coma"], 2, params, workspace, tmp_path / "work", out, "cmd", 1)

    result = json.loads(out.read_text())
    assert result["command"] == "cmd"
    assert {"cpu_count", "torch", "device"} <= set(result["machine"])
    assert result["machine"]["threads_per_run"] == 1
    assert result["settings"]["pairs_per_step"] == 14
    muco, coma = result["rows"]
    assert [muco["method"], coma["method"]] == ["muco", "coma"]
    assert muco["stages"] == [{"method": "muco", "max_steps": 2, "global_batch_size": 2}]
    assert coma["stages"] == [
        {"method": "coma_compress", "max_steps": 1, "global_batch_size": 2},
        {"method": "coma_contrastive", "max_steps": 1, "global_batch_size": 14},
    ]
    assert muco["readout"]["readout"] == "emb"
    assert coma["readout"] == {
        "readout": "compression_mean",
        "compression_tokens": 32,
        "template_version": "coma-v1",
    }
    keys = {"test/overall", "test_unseen/overall"} | {
        f"test/{task}" for task in ("classification", "vqa", "retrieval", "grounding")
    }
    for row in (muco, coma):
        assert row["pairs"] == 2 * 14 and row["steps"] == 2
        assert row["tokens"] > 0 and 0 < row["train_seconds"] < row["wall_seconds"]
        assert keys <= set(row["scores"])
        assert all(0 <= row["scores"][key] <= 100 for key in keys)
    assert keys <= set(result["benchmark"]["chance"])
    assert result["benchmark"]["splits"] == ["test", "test_unseen"]
