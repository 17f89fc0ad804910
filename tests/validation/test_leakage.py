"""Leakage: evaluation images (exact and near copies) and texts are found in training data."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from muco.config import DecodeLimits, EvalSetSpec, ImagesConfig, LeakageConfig
from muco.images import scenes
from muco.images.decode import decode_image, sha256_bytes
from muco.images.pool import build_pool, read_manifest
from muco.records import M3TRecord, write_shards
from muco.synthesis.content import M3T_TURN_TYPES, M3TContent
from muco.validation.leakage import (
    EvalSet,
    LeakageDetector,
    load_eval_set,
    normalise_text,
)
from muco.validation.phash import VisualSignature, visual_signature

LIMITS = DecodeLimits()
SHARED_TEXT = "The red circle is to the left of the blue square."


def _photo(seed: int) -> bytes:
    """PNG bytes of a 256 x 192 photo-like image: gradients, shapes and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:192, 0:256] / 256
    base = np.stack(
        [rng.uniform(60, 190) + 50 * np.sin(rng.uniform(1, 9) * x + rng.uniform(1, 9) * y)] * 3,
        axis=-1,
    ) + rng.uniform(-40, 40, size=3)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, 200)), int(rng.integers(0, 140))
        box = (x0, y0, x0 + int(rng.integers(20, 80)), y0 + int(rng.integers(20, 80)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 8, size=(192, 256, 3))
    return _encode(Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)), "PNG")


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _fingerprint(data: bytes) -> tuple[str, VisualSignature]:
    """What the validate stage computes for a training image: content hash and signature."""
    decoded = decode_image(data, LIMITS)
    return decoded.sha256, visual_signature(decoded.image)


def _folder_eval_set(root: Path) -> Path:
    folder = root / "bench"
    (folder / "images").mkdir(parents=True)
    for index in range(3):
        (folder / "images" / f"{index:03d}.png").write_bytes(_photo(index))
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "queries.txt").write_text(f"{SHARED_TEXT}\n\n   \nred\n", encoding="utf-8")
    return folder


@pytest.fixture
def detector(tmp_path: Path) -> LeakageDetector:
    eval_set = load_eval_set(EvalSetSpec(kind="folder", path=_folder_eval_set(tmp_path)), LIMITS)
    return _detector([eval_set])


def _detector(eval_sets: list[EvalSet], max_distance: int | None = None) -> LeakageDetector:
    config = LeakageConfig()
    return LeakageDetector(
        eval_sets,
        config.phash_max_distance if max_distance is None else max_distance,
        config.min_text_chars,
        config.colour_max_deviation,
    )


def test_normalise_text_ignores_case_spacing_punctuation_and_placeholders() -> None:
    assert normalise_text("<|image_1|>\n  The RED circle,   is LEFT!  ") == "the red circle is left"
    assert (
        normalise_text("Don’t 'quote' me") == normalise_text("don't quote me") == ("don't quote me")
    )
    assert normalise_text("don't") != normalise_text("don t")
    assert normalise_text("<|image_1|>  ...  ") == ""


def test_exact_copy_of_an_evaluation_image_is_an_exact_leak(detector: LeakageDetector) -> None:
    leaks = detector.check_image(*_fingerprint(_photo(1)))
    assert [(leak.kind, leak.eval_set, leak.where) for leak in leaks] == [
        ("exact_image", "bench", "bench:images/001.png")
    ]


def test_reencoded_resized_copy_is_a_near_leak(detector: LeakageDetector) -> None:
    original = Image.open(io.BytesIO(_photo(2)))
    copy = Image.open(io.BytesIO(_encode(original, "JPEG", quality=70))).resize((154, 115))
    leaks = detector.check_image(*_fingerprint(_encode(copy, "PNG")))
    assert [(leak.kind, leak.where) for leak in leaks] == [("near_image", "bench:images/002.png")]
    assert leaks[0].detail.startswith("phash distance ")
    assert "colour deviation" in leaks[0].detail
    assert leaks[0].detail.endswith(" to bench:images/002.png")


def test_unrelated_image_is_not_a_leak(detector: LeakageDetector) -> None:
    assert detector.check_image(*_fingerprint(_photo(99))) == []


def test_shared_text_is_a_leak_after_normalisation(detector: LeakageDetector) -> None:
    variant = "<|image_1|>\nthe RED circle is to the left  of the blue square"
    leaks = detector.check_texts(["something else entirely, long enough", variant, variant])
    assert [(leak.kind, leak.where) for leak in leaks] == [("text", "bench:queries.txt:1")]
    assert leaks[0].detail == normalise_text(SHARED_TEXT)


def test_short_generic_text_is_not_a_leak(detector: LeakageDetector) -> None:
    assert detector.check_texts(["Red", "<|image_1|> red."]) == []


def test_folder_eval_set_lists_images_texts_and_skips_broken_files(tmp_path: Path) -> None:
    folder = _folder_eval_set(tmp_path)
    eval_set = load_eval_set(EvalSetSpec(kind="folder", path=folder, name="mine"), LIMITS)
    assert eval_set.name == "mine"
    assert eval_set.skipped == 1
    assert sorted(eval_set.image_sha256.values()) == [
        f"mine:images/{index:03d}.png" for index in range(3)
    ]
    assert [where for _, where in eval_set.signatures] == [
        f"mine:images/{index:03d}.png" for index in range(3)
    ]
    assert eval_set.texts == {
        normalise_text(SHARED_TEXT): "mine:queries.txt:1",
        "red": "mine:queries.txt:4",
    }


def test_pool_eval_set_keeps_only_the_requested_splits(tmp_path: Path) -> None:
    config = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": 56,
                "counts": {"train": 3, "test": 2, "test_unseen": 0},
            }
        }
    )
    build_pool(config, tmp_path / "pool")
    spec = EvalSetSpec(kind="pool", path=tmp_path / "pool", splits=("test",))
    eval_set = load_eval_set(spec, LIMITS)
    manifest = read_manifest(tmp_path / "pool").to_pylist()
    expected = {
        row["sha256"]: f"pool:{row['image_id']}" for row in manifest if row["split"] == "test"
    }
    assert eval_set.name == "pool"
    assert eval_set.image_sha256 == expected
    assert len(eval_set.signatures) == 2
    assert eval_set.texts == {} and eval_set.skipped == 0

    with pytest.raises(ValueError, match="test_unseen"):
        load_eval_set(spec.model_copy(update={"splits": ("test_unseen",)}), LIMITS)


def test_records_eval_set_reads_texts_and_images_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "q.png").write_bytes(_photo(5))
    content = M3TContent(
        qry=tuple((f"<|image_1|>\nWhat is in turn {i}?", f"Name turn {i}") for i in range(7)),
        pos_text=tuple(f"answer {i}" for i in range(7)),
        pos_sentence=tuple(f"The answer to turn {i} is here." for i in range(7)),
        neg_text=tuple(f"wrong {i}" for i in range(7)),
        qry_sentence="A photograph of several coloured ellipses.",
        turn_types=tuple(M3T_TURN_TYPES),
    )
    record = M3TRecord(
        record_id="r0",
        image_sha256="recorded-sha",
        qry_image_path="q.png",
        content=content,
        generator="scene_graph",
        generator_model="m",
        prompt_version="v",
        sampling={},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    write_shards([record], tmp_path / "records", shard_size=10)
    spec = EvalSetSpec(
        kind="records", path=tmp_path / "records", image_root=tmp_path / "images", name="m3t"
    )
    eval_set = load_eval_set(spec, LIMITS)
    assert eval_set.image_sha256 == {
        "recorded-sha": "m3t:row 0",
        sha256_bytes(_photo(5)): "m3t:q.png",
    }
    assert [where for _, where in eval_set.signatures] == ["m3t:q.png"]
    assert eval_set.texts["what is in turn 3"] == "m3t:row 0"
    assert "the answer to turn 6 is here" in eval_set.texts
    assert {"answer 0", "wrong 6", "a photograph of several coloured ellipses"} <= set(
        eval_set.texts
    )
    assert len(eval_set.texts) == 7 * 5 + 1


def test_missing_eval_set_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_eval_set(EvalSetSpec(kind="folder", path=missing), LIMITS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"manifest\.parquet"):
        load_eval_set(EvalSetSpec(kind="pool", path=tmp_path / "empty"), LIMITS)


# --------------------------------------------------------------------- the default profile


def _scene_fingerprints() -> tuple[list[tuple[str, VisualSignature]], EvalSet]:
    """Train scenes' (sha256, signature) and an eval set of the test splits, as in params.yaml."""
    rendered = scenes.generate_scenes(0, {"train": 600, "test": 100, "test_unseen": 100})
    train: list[tuple[str, VisualSignature]] = []
    eval_sha: dict[str, str] = {}
    eval_signatures: list[tuple[VisualSignature, str]] = []
    for scene in rendered:
        image = scenes.render_scene(scene, 112)
        sha256, signature = sha256_bytes(scenes.png_bytes(image)), visual_signature(image)
        if scene.split == "train":
            train.append((sha256, signature))
        else:
            eval_sha[sha256] = f"scenes-bench:{scene.scene_id}"
            eval_signatures.append((signature, f"scenes-bench:{scene.scene_id}"))
    return train, EvalSet("scenes-bench", eval_sha, eval_signatures, {})


def test_no_train_scene_has_the_bytes_of_a_test_scene() -> None:
    train, eval_set = _scene_fingerprints()
    detector = _detector([eval_set], max_distance=0)
    assert not any(leak.kind == "exact_image" for t in train for leak in detector.check_image(*t))


def test_default_thresholds_flag_no_distinct_scene() -> None:
    """Flat scenes collide on pHash alone (measured: 92 of 600 train scenes within distance 6
    of a test scene, 24 at distance 0); the colour check must reject every one of them."""
    train, eval_set = _scene_fingerprints()
    phash_only = _detector([eval_set])
    phash_only.max_colour_deviation = float("inf")
    candidates = sum(bool(phash_only.check_image(*fingerprint)) for fingerprint in train)
    assert candidates > 0.1 * len(train)  # the collisions are real: the colour check matters
    detector = _detector([eval_set])
    assert sum(bool(detector.check_image(*fingerprint)) for fingerprint in train) == 0


def test_reencoded_copy_of_a_test_scene_is_still_caught() -> None:
    _, eval_set = _scene_fingerprints()
    scene = scenes.generate_scene(0, "test", 7)
    copy = scenes.render_scene(scene, 112).resize((90, 90), Image.Resampling.BICUBIC)
    copy = Image.open(io.BytesIO(_encode(copy, "JPEG", quality=90)))
    (leak,) = _detector([eval_set]).check_image(*_fingerprint(_encode(copy, "PNG")))
    assert (leak.kind, leak.where) == ("near_image", "scenes-bench:test-000007")
