"""Shared fixtures: small, offline inputs the project makes itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from muco.config import BackboneConfig, ImagesConfig, SynthesizeConfig, TinyBackboneConfig
from muco.images.pool import build_pool
from muco.model.backbone import prepare_backbone
from muco.synthesis.generators import build_generator
from muco.synthesis.runner import synthesize

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


@pytest.fixture(scope="module")
def training_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``images/`` (16 scenes), ``m3t/`` (scene-graph records), ``backbone/`` (tiny, hidden 32),
    with image pixels fixed by :data:`PIXELS`; one per test module."""
    root = tmp_path_factory.mktemp("training")
    train_scenes = 16
    images = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": 56,
                "counts": {"train": train_scenes, "test": 0, "test_unseen": 0},
            }
        }
    )
    build_pool(images, root / "images")
    cfg = SynthesizeConfig()
    synthesize(root / "images", root / "m3t", cfg, build_generator(cfg), root / "cache")
    backbone = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    prepare_backbone(backbone, root / "backbone")
    return root
