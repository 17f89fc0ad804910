"""benchmarks/visual_probe.py: the ridge probe on hand-made features, and the script end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

from muco.config import BackboneConfig, ImagesConfig, TinyBackboneConfig
from muco.evaluation.scenes_bench import read_bench_scenes
from muco.images.pool import build_pool
from muco.model.backbone import prepare_backbone

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


@pytest.fixture(scope="module")
def script(repo_root: Path) -> Iterator[ModuleType]:
    with load_script(repo_root / "benchmarks" / "visual_probe.py") as module:
        yield module


def test_features_that_spell_the_class_are_read_perfectly(script: ModuleType) -> None:
    rng = np.random.default_rng(0)
    train_y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    test_y = np.array([2, 1, 0, 0])
    one_hot = np.eye(3)
    train_x = one_hot[train_y] + 0.01 * rng.standard_normal((9, 3))
    test_x = one_hot[test_y] + 0.01 * rng.standard_normal((4, 3))
    assert script.ridge_probe_accuracy(train_x, train_y, test_x, test_y, l2=0.1) == 1.0


def test_features_without_information_predict_one_class(script: ModuleType) -> None:
    train_y = np.array(["red", "blue", "red"])
    test_y = np.array(["blue", "red", "red", "red"])
    constant = np.ones((3, 2)), np.ones((4, 2))
    # Every standardised row is zero, so every score ties and the first class (blue) wins.
    accuracy = script.ridge_probe_accuracy(constant[0], train_y, constant[1], test_y, l2=1.0)
    assert accuracy == 0.25
    assert script.majority_rate(test_y) == 0.75


def test_the_position_probe_reads_tokens_that_carry_their_place(script: ModuleType) -> None:
    rng = np.random.default_rng(0)
    place = np.eye(4)  # token i's content is the one-hot of i, plus noise
    fit = place[None] + 0.05 * rng.standard_normal((6, 4, 4))
    score = place[None] + 0.05 * rng.standard_normal((3, 4, 4))
    assert script.position_probe(fit, score, l2=0.1) == {"accuracy": 100.0, "majority": 25.0}
    # The same content at every place: nothing tells the tokens apart.
    same = np.broadcast_to(rng.standard_normal(4), (6, 4, 4)).copy()
    assert script.position_probe(same, same[:3], l2=0.1)["accuracy"] == 25.0


def test_an_empty_side_is_an_error(script: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least one"):
        script.ridge_probe_accuracy(np.ones((0, 2)), np.array([]), np.ones((1, 2)), [1], 1.0)


def test_the_script_probes_a_tiny_model_on_a_scene_pool(script: ModuleType, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    images = {"kind": "scenes", "image_size": 56, "counts": {"train": 16, "test": 8}}
    build_pool(ImagesConfig.model_validate({"source": images}), pool)
    backbone = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    model = prepare_backbone(backbone, tmp_path / "model")
    out = tmp_path / "probe.json"
    pixels = ["--min-pixels", str(56 * 56), "--max-pixels", str(56 * 56)]
    assert script.main([str(model), "--pool", str(pool), *pixels, "--out", str(out)]) == 0

    record = json.loads(out.read_text())
    scores = record["models"][str(model)]
    assert set(scores) == {"colour", "shape", "size", "position"}
    # 56 px: a 2x2 grid of merged tokens.
    assert scores["position"]["majority"] == 25.0
    assert 0.0 <= scores["position"]["accuracy"] <= 100.0
    bench = read_bench_scenes(pool, ["train", "test"])
    for attribute in ("colour", "shape", "size"):
        fit = script.cell_labels(bench["train"], attribute)
        score = script.cell_labels(bench["test"], attribute)
        # The majority rate re-derived from the scene graphs, over the cells both splits fill.
        majorities = [
            script.majority_rate(np.array([x for x in score[cell] if x is not None]))
            for cell in fit
            if any(x is not None for x in fit[cell]) and any(x is not None for x in score[cell])
        ]
        assert scores[attribute]["cells"] == len(majorities) > 0
        assert scores[attribute]["majority"] == round(100 * float(np.mean(majorities)), 1)
        assert 0.0 <= scores[attribute]["accuracy"] <= 100.0
