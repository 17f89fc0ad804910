"""An evaluation workspace: a small scene pool with held-out splits and a tiny backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

from muco.config import BackboneConfig, ImagesConfig, TinyBackboneConfig
from muco.evaluation.model_spec import ModelSpec
from muco.images.pool import build_pool
from muco.model.backbone import prepare_backbone

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


@pytest.fixture(scope="session")
def scene_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scene pool of 56-px images: 4 train, 12 test and 12 test_unseen scenes."""
    root = tmp_path_factory.mktemp("scene_pool")
    images = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": 56,
                "counts": {"train": 4, "test": 12, "test_unseen": 12},
            }
        }
    )
    build_pool(images, root)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL directory with the MuCo tokens (hidden size 32)."""
    root = tmp_path_factory.mktemp("tiny_model")
    backbone = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    return prepare_backbone(backbone, root / "model")


@pytest.fixture(scope="session")
def tiny_spec(tiny_model: Path) -> ModelSpec:
    """The tiny model on the CPU, with the pixel limits it was built for."""
    return ModelSpec(str(tiny_model), device="cpu", **PIXELS)
