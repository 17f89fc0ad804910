"""The transformers generator end to end on the tiny random checkpoint.

A random model writes garbage: every image must end as one counted rejection with a parse
reason, nothing may crash, and a re-run must take everything from the cache without loading
the model.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from muco.config import BackboneConfig, ImagesConfig, SynthesizeConfig, TinyBackboneConfig
from muco.images.pool import build_pool
from muco.model.backbone import prepare_backbone
from muco.synthesis.generators import build_generator
from muco.synthesis.generators.local_model import LocalMLLMGenerator
from muco.synthesis.runner import REJECTIONS, synthesize

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    return prepare_backbone(config, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = ImagesConfig.model_validate(
        {"source": {"kind": "scenes", "image_size": 56, "counts": {"train": 5, "test": 1}}}
    )
    out = tmp_path_factory.mktemp("pool") / "images"
    build_pool(images, out)
    return out


def test_garbage_from_a_random_model_is_rejected_with_reasons(
    tiny_checkpoint: Path, pool: Path, tmp_path: Path
) -> None:
    cfg = SynthesizeConfig.model_validate(
        {
            "generator": {
                "kind": "transformers",
                "model": str(tiny_checkpoint),
                "batch_size": 2,
                "sampling": {"temperature": 0.0, "max_new_tokens": 24},
            }
        }
    )
    generator = build_generator(cfg, BackboneConfig(**PIXELS))
    assert isinstance(generator, LocalMLLMGenerator)
    report = synthesize(pool, tmp_path / "m3t", cfg, generator, tmp_path / "cache")

    assert report.images == 5 and report.records == 0 and report.rejected == 5
    assert set(report.rejections_by_reason) <= {"invalid_json", "truncated_json", "not_an_object"}
    rejections = pq.read_table(tmp_path / "m3t" / REJECTIONS).to_pylist()
    assert sorted(r["image_id"] for r in rejections) == [f"train-{i:06d}" for i in range(5)]
    assert all(r["detail"] and not r["transient"] for r in rejections)

    again = build_generator(cfg, BackboneConfig(**PIXELS))
    rerun = synthesize(pool, tmp_path / "m3t", cfg, again, tmp_path / "cache")
    assert (rerun.from_cache, rerun.generated, rerun.rejected) == (5, 0, 5)
    assert again._loaded is None  # the model was never loaded for a fully cached run
