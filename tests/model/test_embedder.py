"""The embedder: `<|emb|>` read-out, the exact single-turn prompt, batching, the MuCo tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2Tokenizer

from muco.config import BackboneConfig, TinyBackboneConfig
from muco.model import templates
from muco.model.backbone import Backbone, load_backbone, prepare_backbone
from muco.model.embedder import (
    Embedder,
    EmbedInput,
    ensure_special_tokens,
    trainable_token_ids,
)
from muco.model.processor import ImageOnlyQwen2VLProcessor, build_image_processor
from muco.model.special_tokens import EMB_TOKEN, EOS_TOKEN, MASK_TOKEN, PAD_TOKEN

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
SINGLE_TURN_WITH_IMAGE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is red?\n<|im_end|>\n"
    "<|im_start|>assistant\n<|emb|><|im_end|>"
)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = BackboneConfig(
        tiny=TinyBackboneConfig(family=request.param, hidden_size=32, vocab_size=512), **PIXELS
    )
    return prepare_backbone(cfg, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def embedder(tiny_dir: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_dir, **PIXELS)


def _image(seed: int, size: tuple[int, int] = (84, 112)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mixed_items() -> list[EmbedInput]:
    return [
        EmbedInput(text="a short one"),
        EmbedInput(image=_image(1)),
        EmbedInput(text="a much longer text that needs many more tokens than the others do"),
        EmbedInput(text="What is red?", image=_image(2, (56, 56))),
        EmbedInput(text="<|image_1|> the MMEB placeholder", image=_image(3)),
        EmbedInput(text="tiny"),
    ]


def test_encode_feeds_the_single_turn_template_byte_for_byte(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    original = ImageOnlyQwen2VLProcessor.__call__

    def spy(self: ImageOnlyQwen2VLProcessor, *args: Any, **kwargs: Any) -> Any:
        seen.extend(kwargs["text"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageOnlyQwen2VLProcessor, "__call__", spy)
    items = _mixed_items()
    embedder.encode(items, batch_size=len(items))
    expected = [templates.single_turn(i.text or "", has_image=i.image is not None) for i in items]
    assert sorted(seen) == sorted(expected)
    assert [embedder.prompt_for(item) for item in items] == expected
    assert embedder.prompt_for(EmbedInput("What is red?", _image(0))) == SINGLE_TURN_WITH_IMAGE
    # an image without text is the template with only the image in the user turn
    assert "user\n<|vision_start|><|image_pad|><|vision_end|>\n<|im_end|>" in expected[1]


def test_one_unit_float32_embedding_per_item_in_input_order(embedder: Embedder) -> None:
    items = _mixed_items()
    together = embedder.encode(items, batch_size=4)
    assert together.shape == (len(items), embedder.hidden_size)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([embedder.encode([item]) for item in items])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_padding_side_does_not_change_embeddings(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = embedder.backbone.processor.tokenizer
    text_only = [item for item in _mixed_items() if item.image is None]
    results = {}
    for side in ("left", "right"):
        monkeypatch.setattr(tokenizer, "padding_side", side)
        results[side] = (embedder.encode(_mixed_items()), embedder.encode(text_only))
    for left, right in zip(results["left"], results["right"], strict=True):
        np.testing.assert_allclose(left, right, atol=1e-5)


def test_each_emb_of_a_multi_turn_sequence_is_causal(embedder: Embedder) -> None:
    image = _image(5)
    multi = templates.multi_turn(["what colour?", "where is it?"], has_image=True)
    single = templates.single_turn("what colour?", has_image=True)
    assert multi.startswith(single)
    batch = embedder.backbone.processor(text=[multi], images=[image], return_tensors="pt")
    rows = embedder.forward_embeddings(batch)
    assert rows.shape == (2, embedder.hidden_size)
    assert rows.requires_grad  # training differentiates through it
    first = embedder.encode([EmbedInput(text="what colour?", image=image)])[0]
    np.testing.assert_allclose(rows[0].detach().numpy(), first, atol=1e-5)
    assert not torch.allclose(rows[0], rows[1])


def test_embed_positions_mark_every_emb_token(embedder: Embedder) -> None:
    tokenizer = embedder.backbone.processor.tokenizer
    ids = tokenizer([f"a{EMB_TOKEN}b{EMB_TOKEN}"], return_tensors="pt")["input_ids"]
    mask = embedder.embed_positions(ids)
    assert mask.dtype == torch.bool and mask.shape == ids.shape
    assert mask.sum().item() == 2


def test_image_matters_and_encoding_is_deterministic(embedder: Embedder) -> None:
    with_image = EmbedInput(text="What is red?", image=_image(4))
    without = EmbedInput(text="What is red?")
    first = embedder.encode([with_image, without])
    assert not np.allclose(first[0], first[1])
    assert np.array_equal(first, embedder.encode([with_image, without]))


def test_encode_reads_image_files_and_restores_training_mode(
    embedder: Embedder, tmp_path: Path
) -> None:
    path = tmp_path / "x.png"
    _image(6).save(path)
    model = embedder.backbone.model
    model.train()
    try:
        from_file = embedder.encode([EmbedInput(image=path), EmbedInput(image=str(path))])
        assert model.training
    finally:
        model.eval()
    in_memory = embedder.encode([EmbedInput(image=_image(6))])
    np.testing.assert_allclose(from_file, np.repeat(in_memory, 2, axis=0), atol=1e-6)


def test_text_containing_an_emb_token_is_rejected(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match=r"item 1: expected exactly one <\|emb\|>, found 2"):
        embedder.encode([EmbedInput(text="fine"), EmbedInput(text=f"sneaky {EMB_TOKEN}")])


def test_ensure_special_tokens_is_a_no_op_when_present(tiny_dir: Path) -> None:
    backbone = load_backbone(tiny_dir, **PIXELS)
    rows = backbone.model.get_input_embeddings().weight.clone()
    size = len(backbone.processor.tokenizer)
    assert ensure_special_tokens(backbone) is False
    assert len(backbone.processor.tokenizer) == size
    assert torch.equal(backbone.model.get_input_embeddings().weight, rows)


def _without_muco_tokens(backbone: Backbone) -> Backbone:
    """The same model with a tokenizer as stock Qwen2-VL ships it: no `<|emb|>`, no `<|mask|>`."""
    tokenizer = backbone.processor.tokenizer
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = {t: i for t, i in model["vocab"].items() if t not in (EMB_TOKEN, MASK_TOKEN)}
    stock = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in model["merges"]],
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
    )
    extra = [t for t in tokenizer.extra_special_tokens if t not in (EMB_TOKEN, MASK_TOKEN)]
    stock.add_special_tokens(
        {"additional_special_tokens": extra}, replace_extra_special_tokens=False
    )
    processor = ImageOnlyQwen2VLProcessor(build_image_processor(**PIXELS), stock)
    return Backbone(model=backbone.model, processor=processor, source=backbone.source)


@pytest.mark.parametrize("table_has_room", [True, False])
def test_ensure_special_tokens_adds_tokens_and_initialises_rows(
    tiny_dir: Path, table_has_room: bool
) -> None:
    backbone = _without_muco_tokens(load_backbone(tiny_dir, **PIXELS))
    tokenizer, model = backbone.processor.tokenizer, backbone.model
    with pytest.raises(ValueError, match="ensure_special_tokens"):
        trainable_token_ids(tokenizer)
    known = len(tokenizer)
    if not table_has_room:  # a table exactly as large as the vocabulary must grow
        model.resize_token_embeddings(known)
    rows_before = model.get_input_embeddings().num_embeddings

    assert ensure_special_tokens(backbone) is True
    ids = trainable_token_ids(tokenizer)
    assert ids == [known, known + 1]
    table = model.get_input_embeddings().weight
    assert table.shape[0] >= known + 2
    assert (table.shape[0] > rows_before) == (not table_has_room)
    for weights in (table, model.get_output_embeddings().weight):
        mean = weights[:known].mean(dim=0)
        assert torch.allclose(weights[ids], mean.expand(2, -1))
    assert model.config.text_config.vocab_size == table.shape[0]
    vectors = Embedder(backbone).encode([EmbedInput(text="hello"), EmbedInput(image=_image(8))])
    assert vectors.shape == (2, model.config.text_config.hidden_size)
    assert np.isfinite(vectors).all()
    assert ensure_special_tokens(backbone) is False
