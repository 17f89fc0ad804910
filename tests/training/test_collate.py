"""Collating packed samples with the tiny backbone's processor: one embedding row per pair."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from muco.config import BackboneConfig, TinyBackboneConfig
from muco.model.backbone import Backbone, load_backbone, prepare_backbone
from muco.model.special_tokens import EMB_TOKEN, IMAGE_PAD
from muco.records import M3TRecord
from muco.synthesis.content import M3TContent
from muco.training.collate import Collator, count_tokens
from muco.training.packing import PackedSample, pack_multi_turn, pack_single_turn

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
TURNS = 3


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    config = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    path = prepare_backbone(config, tmp_path_factory.mktemp("tiny") / "model")
    return load_backbone(path, **PIXELS)


def _record(tag: str, image_path: str, pos_image_path: str = "") -> dict:
    content = M3TContent(
        qry=tuple((f"<|image_1|>\nquestion {i} about {tag}?",) for i in range(TURNS)),
        pos_text=tuple(f"answer {i} {tag}" for i in range(TURNS)),
        pos_sentence=tuple(f"The answer is {i}." for i in range(TURNS)),
        neg_text=tuple(f"wrong {i}" for i in range(TURNS)),
        qry_sentence=f"image {tag}",
        turn_types=tuple(range(TURNS)),
    )
    return M3TRecord(
        record_id=f"rec-{tag}",
        image_sha256=f"sha-{tag}",
        qry_image_path=image_path,
        content=content,
        generator="scene_graph",
        generator_model="m",
        prompt_version="v",
        sampling={},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        pos_image_path=pos_image_path,
    ).to_row()


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("L").save(path)  # greyscale on disk: the collator makes RGB


@pytest.fixture
def samples(tmp_path: Path) -> list[PackedSample]:
    _write_image(tmp_path / "a.png", (80, 60), 0)
    _write_image(tmp_path / "b.png", (40, 90), 1)
    rng = np.random.default_rng(0)
    return [
        pack_multi_turn(_record("a", "a.png"), tmp_path, TURNS, rng),
        pack_multi_turn(_record("t", ""), tmp_path, TURNS, rng),  # text-only query
        pack_multi_turn(_record("b", "b.png"), tmp_path, TURNS, rng),
    ]


def _emb_count(backbone: Backbone, input_ids: torch.Tensor) -> int:
    emb_id = backbone.processor.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    return int((input_ids == emb_id).sum())


def test_one_emb_token_per_pair_and_one_image_per_sample_that_has_one(
    backbone: Backbone, samples: list[PackedSample]
) -> None:
    batch = Collator(backbone.processor)(samples)
    assert batch.pairs == 3 * TURNS == len(batch.query_image_ids) == len(batch.target_texts)
    assert _emb_count(backbone, batch.query["input_ids"]) == batch.pairs
    assert _emb_count(backbone, batch.target["input_ids"]) == batch.pairs
    assert batch.query["input_ids"].shape[0] == 3
    assert batch.query["image_grid_thw"].shape == (2, 3)
    assert batch.query["pixel_values"].shape[0] == int(batch.query["image_grid_thw"].prod(1).sum())
    # the text-only sample holds no image tokens; the others hold theirs
    image_pad = backbone.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    per_sample = (batch.query["input_ids"] == image_pad).sum(dim=1).tolist()
    assert per_sample[1] == 0 and per_sample[0] > 0 and per_sample[2] > 0
    assert "pixel_values" not in batch.target


def test_ids_and_texts_follow_sample_major_turn_minor_order(
    backbone: Backbone, samples: list[PackedSample]
) -> None:
    batch = Collator(backbone.processor)(samples)
    expected = [image_id for image_id in ("sha-a", "sha-t", "sha-b") for _ in range(TURNS)]
    assert batch.query_image_ids == expected == batch.target_image_ids
    assert batch.target_texts == [text for s in samples for text in s.target_texts]


def test_target_images_are_collated_on_the_target_side(backbone: Backbone, tmp_path: Path) -> None:
    _write_image(tmp_path / "q.png", (56, 56), 2)
    _write_image(tmp_path / "p.png", (56, 56), 3)
    rng = np.random.default_rng(0)
    sample = pack_multi_turn(_record("c", "q.png", pos_image_path="p.png"), tmp_path, TURNS, rng)
    batch = Collator(backbone.processor)([sample])
    assert batch.target["image_grid_thw"].shape == (1, 3)
    assert _emb_count(backbone, batch.target["input_ids"]) == TURNS


def test_single_turn_samples_collate_to_one_pair_each(backbone: Backbone, tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", (80, 60), 0)
    singles = pack_single_turn(_record("a", "a.png"), tmp_path, np.random.default_rng(0))
    batch = Collator(backbone.processor)(singles)
    assert batch.pairs == TURNS == _emb_count(backbone, batch.query["input_ids"])
    assert batch.query["image_grid_thw"].shape == (TURNS, 3)


def test_hard_negatives_are_a_third_text_only_side(backbone: Backbone, tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", (80, 60), 0)
    rng = np.random.default_rng(0)
    with_negatives = [
        pack_multi_turn(_record(tag, image), tmp_path, TURNS, rng, negatives=True)
        for tag, image in (("a", "a.png"), ("t", ""))
    ]
    batch = Collator(backbone.processor)(with_negatives)
    assert batch.negative is not None and "pixel_values" not in batch.negative
    assert _emb_count(backbone, batch.negative["input_ids"]) == batch.pairs
    assert batch.negative_texts == [t for s in with_negatives for t in s.negative_texts]
    assert len(batch.negative_texts) == batch.pairs
    sides = (batch.query, batch.target, batch.negative)
    assert count_tokens(batch) == sum(int(side["attention_mask"].sum()) for side in sides)
    # Under ZeRO-3 the text-only side still drives the vision tower (one keep-alive row).
    zero3 = Collator(backbone.processor, always_run_vision=True)(with_negatives)
    assert zero3.negative["input_ids"].shape[0] == 3
    assert zero3.negative["image_grid_thw"].shape == (1, 3)
    plain = pack_multi_turn(_record("b", "a.png"), tmp_path, TURNS, rng)
    assert Collator(backbone.processor)([plain]).negative is None
    with pytest.raises(ValueError, match="some samples of the batch have hard negatives"):
        Collator(backbone.processor)([*with_negatives, plain])


def test_missing_image_is_an_error_naming_path_and_image(
    backbone: Backbone, samples: list[PackedSample], tmp_path: Path
) -> None:
    broken = replace(samples[0], query_image=tmp_path / "gone.png")
    with pytest.raises(OSError, match=r"gone\.png \(image sha-a\)"):
        Collator(backbone.processor)([broken])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(OSError, match=r"corrupt\.png \(image sha-a\)"):
        Collator(backbone.processor)([replace(samples[0], query_image=tmp_path / "corrupt.png")])


def test_sequence_over_max_length_is_an_error_not_a_truncation(
    backbone: Backbone, samples: list[PackedSample]
) -> None:
    lengths = Collator(backbone.processor)(samples).query["attention_mask"].sum(dim=1).tolist()
    collate = Collator(backbone.processor, max_length=max(lengths) - 1)
    worst = lengths.index(max(lengths))
    with pytest.raises(ValueError, match=rf"query of sample {worst} \(image sha-\w\) has"):
        collate(samples)
    Collator(backbone.processor, max_length=max(lengths))(samples)


def test_tiny_model_runs_on_the_collated_query(
    backbone: Backbone, samples: list[PackedSample]
) -> None:
    batch = Collator(backbone.processor)(samples)
    with torch.no_grad():
        hidden = backbone.model(**batch.query, output_hidden_states=True).hidden_states[-1]
    assert hidden.shape == (*batch.query["input_ids"].shape, 32)
    assert torch.isfinite(hidden).all()
    masks = batch.query["attention_mask"].sum() + batch.target["attention_mask"].sum()
    assert count_tokens(batch) == int(masks) > 0


def test_empty_batch_is_rejected(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        Collator(backbone.processor)([])
