"""The synthesis runner over a whole pool: one record per image content, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from muco.config import ImagesConfig, SynthesizeConfig
from muco.images.pool import MANIFEST, MANIFEST_SCHEMA, build_pool, read_manifest
from muco.records import read_records
from muco.synthesis.generators import build_generator
from muco.synthesis.runner import synthesize


def test_images_with_the_same_content_become_one_record(tmp_path: Path) -> None:
    images = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": 56,
                "counts": {"train": 3, "test": 1, "test_unseen": 0},
            }
        }
    )
    pool = tmp_path / "images"
    build_pool(images, pool)
    # A test scene that renders the same pixels as a training scene: the pool keeps both
    # (splits are independent), and synthesis over both splits must write that content once.
    rows = read_manifest(pool).to_pylist()
    rows.append({**rows[0], "image_id": "test-copy", "split": "test"})
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), pool / MANIFEST)

    cfg = SynthesizeConfig(splits=("train", "test"))
    report = synthesize(pool, tmp_path / "m3t", cfg, build_generator(cfg), tmp_path / "cache")

    records = read_records(tmp_path / "m3t").to_pylist()
    assert (report.images, report.duplicate_images, report.records) == (5, 1, 4)
    assert report.metrics()["duplicate_images"] == 1
    assert sorted(r["image_sha256"] for r in records) == sorted({r["sha256"] for r in rows})
    assert len({r["record_id"] for r in records}) == 4
