"""benchmarks/eval_throughput.py at a tiny scale: the three rows and their invariants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

from muco.config import BackboneConfig, TinyBackboneConfig
from muco.model.backbone import prepare_backbone


@pytest.fixture(scope="module")
def script(repo_root: Path) -> Iterator[ModuleType]:
    with load_script(repo_root / "benchmarks" / "eval_throughput.py") as module:
        yield module


def test_dedup_embeds_each_distinct_input_once_and_the_warm_cache_none(
    script: ModuleType, tmp_path: Path
) -> None:
    backbone = BackboneConfig(
        tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512),
        min_pixels=56 * 56,
        max_pixels=56 * 56,
    )
    model = prepare_backbone(backbone, tmp_path / "model")
    out = tmp_path / "result.json"
    argv = ["--scale", "0.1", "--image-size", "56", "--batch-size", "16", "--device", "cpu"]
    argv += ["--model", str(model), "--out", str(out)]

    assert script.main(argv) == 0

    result = json.loads(out.read_text())
    naive, cold, warm = result["rows"]
    assert [row["mode"] for row in result["rows"]] == ["naive", "dedup_cold", "dedup_warm"]
    listed = sum(dataset["listed_inputs"] for dataset in result["datasets"])
    assert naive["inputs"] == cold["inputs"] == warm["inputs"] == listed
    assert naive["model_inputs"] == listed
    assert cold["model_inputs"] == result["unique_inputs"] < listed
    assert (warm["model_inputs"], warm["batches"]) == (0, 0)
    assert result["max_abs_difference"] <= 1e-4
    assert [dataset["name"] for dataset in result["datasets"]] == [
        "ImageNet_1K",
        "OK-VQA",
        "MSCOCO_t2i",
        "MSCOCO_i2t",
    ]
    assert result["command"].endswith(" ".join(argv))
    assert {"cpu_count", "torch", "device"} <= set(result["machine"])


def test_a_broken_invariant_stops_the_script(script: ModuleType) -> None:
    rows = [
        {"mode": "naive", "inputs": 10, "model_inputs": 10},
        {"mode": "dedup_cold", "inputs": 10, "model_inputs": 4},
        {"mode": "dedup_warm", "inputs": 10, "model_inputs": 1},
    ]
    same = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(SystemExit, match="warm-cache run embedded 1 inputs"):
        script.check(rows, 4, same, same, same)
    rows[2]["model_inputs"] = 0
    with pytest.raises(SystemExit, match="differ by up to"):
        script.check(rows, 4, same, same + 1e-3, same + 1e-3)
    assert script.check(rows, 4, same, same, same) == 0.0
