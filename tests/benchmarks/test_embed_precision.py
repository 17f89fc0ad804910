"""benchmarks/embed_precision.py: the comparison on hand-made rows, the script on a tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_loader import load_script

from muco.config import BackboneConfig, ImagesConfig, TinyBackboneConfig
from muco.images.pool import build_pool
from muco.model.backbone import prepare_backbone

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "embed_precision.py"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    with load_script(SCRIPT) as module:
        yield module


def test_cosines_of_hand_made_rows(script: ModuleType) -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    other = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    assert script.compare(reference, other) == pytest.approx(
        {"cosine_min": 0.8, "cosine_mean": 0.9, "finite": True}
    )
    other[1, 0] = np.nan
    assert script.compare(reference, other)["finite"] is False


def test_every_input_kind_is_embedded(script: ModuleType) -> None:
    images = [Path(f"{i}.png") for i in range(4)]
    items = script.benchmark_inputs(images)
    assert [(item.text is not None, item.image is not None) for item in items] == [
        *[(True, False)] * 4,
        *[(False, True)] * 4,
        *[(True, True)] * 2,
    ]


def test_the_script_compares_a_tiny_model_in_both_dtypes(
    script: ModuleType, tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    images = {
        "kind": "scenes",
        "image_size": 56,
        "counts": {"train": 4, "test": 0, "test_unseen": 0},
    }
    build_pool(ImagesConfig.model_validate({"source": images}), pool)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
    backbone = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **pixels)
    model = prepare_backbone(backbone, tmp_path / "model")
    out = tmp_path / "precision.json"
    argv = ["--model", str(model), "--images", str(pool), "--device", "cpu", "--out", str(out)]
    assert script.main([*argv, "--min-pixels", "3136", "--max-pixels", "3136"]) == 0

    result = json.loads(out.read_text())
    assert result["inputs"] == 4 + 4 + 2
    assert result["dimension"] == 32
    assert result["finite"] is True
    # bf16 keeps 8 bits of mantissa: the same model's rows stay close, but not identical.
    assert 0.99 < result["cosine_min"] < 1.0


def test_a_folder_without_images_is_an_error(script: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--model", str(tmp_path), "--images", str(tmp_path)])
    assert exit_info.value.code == 2  # argparse's usage error, before any model is loaded
