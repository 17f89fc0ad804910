"""CoMa's and CoCoA's 4-D masks through the tiny Qwen2-VL, behaviourally, with sdpa and eager.

A token that must not see the image gives the same output when the image's pixels change, and
a token that may see it changes. "See" is direct attention, so outputs are compared after the
first decoder layer: from the second layer on, what a token reads from the compression tokens
(CoMa) or from EOS (CoCoA) carries the image by design. A full-depth check with every path to
the image cut shows that the mask is applied in every layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from muco.config import BackboneConfig, TinyBackboneConfig
from muco.model.backbone import Backbone, load_backbone, prepare_backbone
from muco.model.special_tokens import EMB_TOKEN, IMAGE_PAD, compression_tokens
from muco.model.templates import single_turn
from muco.training.attention import (
    COCOA_EOS,
    COCOA_INPUT,
    COCOA_RECON,
    COMA_COMPRESSION,
    COMA_PREFIX,
    COMA_TEXT,
    cocoa_attention,
    cocoa_segments,
    coma_attention,
    coma_rules,
    coma_segments,
    segment_attention,
)
from muco.training.forward import backbone_hidden
from muco.training.objectives.cocoa_text import cocoa_sequence
from muco.training.objectives.coma_text import coma_dialogue
from muco.training.vocab import ensure_tokens

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
N_COMP = 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    return prepare_backbone(config, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def backbone(request: pytest.FixtureRequest, tiny_dir: Path) -> Backbone:
    loaded = load_backbone(tiny_dir, attn_implementation=request.param, **PIXELS)
    ensure_tokens(loaded, compression_tokens(N_COMP))
    return loaded


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _process(backbone: Backbone, texts: list[str], images: list[Image.Image]) -> dict:
    return dict(
        backbone.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    )


def _ids(backbone: Backbone, tokens: list[str]) -> list[int]:
    return backbone.processor.tokenizer.convert_tokens_to_ids(tokens)


def _coma_batch(backbone: Backbone, seed: int) -> dict:
    text = coma_dialogue(
        "", True, N_COMP, [("What colour is the circle?", "red"), ("How many?", "two")]
    )
    return _process(backbone, [text], [_image(seed)])


@torch.no_grad()
def test_coma_text_does_not_see_the_image_but_compression_tokens_do(backbone: Backbone) -> None:
    image_id = _ids(backbone, [IMAGE_PAD])[0]
    comp_ids = _ids(backbone, compression_tokens(N_COMP))
    first, second = _coma_batch(backbone, 0), _coma_batch(backbone, 1)
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert not torch.equal(first["pixel_values"], second["pixel_values"])
    ids, mask = first["input_ids"], first["attention_mask"]
    segments = coma_segments(ids, mask, image_id, comp_ids)[0]
    attention = coma_attention(ids, mask, image_id, comp_ids, block_image=True)
    model = backbone.model
    out = [backbone_hidden(model, batch, attention, layer=1)[0] for batch in (first, second)]
    text, comp = segments == COMA_TEXT, segments == COMA_COMPRESSION
    assert text.sum() > 10 and comp.sum() == N_COMP
    torch.testing.assert_close(out[0][text], out[1][text], rtol=0, atol=0)
    assert not torch.allclose(out[0][comp], out[1][comp], atol=1e-4)

    # Switched off, the text attends to the image directly and changes with it.
    causal = coma_attention(ids, mask, image_id, comp_ids, block_image=False)
    out = [backbone_hidden(model, batch, causal, layer=1)[0] for batch in (first, second)]
    assert not torch.allclose(out[0][text], out[1][text], atol=1e-4)


@torch.no_grad()
def test_coma_mask_applies_in_every_layer(backbone: Backbone) -> None:
    image_id = _ids(backbone, [IMAGE_PAD])[0]
    comp_ids = _ids(backbone, compression_tokens(N_COMP))
    first, second = _coma_batch(backbone, 0), _coma_batch(backbone, 1)
    segments = coma_segments(first["input_ids"], first["attention_mask"], image_id, comp_ids)
    rules = coma_rules(block_image=True)
    del rules[(COMA_TEXT, COMA_COMPRESSION)]  # cut the one legitimate path as well
    attention = segment_attention(segments, rules)
    out = [backbone_hidden(backbone.model, b, attention)[0] for b in (first, second)]
    text, prefix = segments[0] == COMA_TEXT, segments[0] == COMA_PREFIX
    torch.testing.assert_close(out[0][text], out[1][text], rtol=0, atol=0)
    torch.testing.assert_close(out[0][prefix], out[1][prefix], rtol=0, atol=0)


def _cocoa_batch(backbone: Backbone, seed: int) -> dict:
    text = cocoa_sequence("<|image_1|>\nWhat colour is the circle?", has_image=True)
    return _process(backbone, [text], [_image(seed)])


@torch.no_grad()
def test_cocoa_reconstruction_does_not_see_the_input_but_eos_does(backbone: Backbone) -> None:
    eos_id = _ids(backbone, [EMB_TOKEN])[0]
    first, second = _cocoa_batch(backbone, 0), _cocoa_batch(backbone, 1)
    ids, mask = first["input_ids"], first["attention_mask"]
    segments = cocoa_segments(ids, mask, eos_id)[0]
    recon, eos = segments == COCOA_RECON, segments == COCOA_EOS
    # The system prompt comes before the image: it sees it only bidirectionally.
    before_image = (segments == COCOA_INPUT) & (
        torch.arange(ids.shape[1]) < (ids[0] == _ids(backbone, [IMAGE_PAD])[0]).nonzero()[0]
    )
    assert recon.sum() > 3 and eos.sum() == 1 and before_image.sum() > 3
    model = backbone.model
    attention = cocoa_attention(ids, mask, eos_id, bidirectional_input=True)
    out = [backbone_hidden(model, batch, attention, layer=1)[0] for batch in (first, second)]
    torch.testing.assert_close(out[0][recon], out[1][recon], rtol=0, atol=0)
    assert not torch.allclose(out[0][eos], out[1][eos], atol=1e-4)
    assert not torch.allclose(out[0][before_image], out[1][before_image], atol=1e-4)

    causal = cocoa_attention(ids, mask, eos_id, bidirectional_input=False)
    out = [backbone_hidden(model, batch, causal, layer=1)[0] for batch in (first, second)]
    torch.testing.assert_close(out[0][before_image], out[1][before_image], rtol=0, atol=0)
    torch.testing.assert_close(out[0][recon], out[1][recon], rtol=0, atol=0)


@torch.no_grad()
def test_a_causal_4d_mask_reproduces_the_2d_path(backbone: Backbone) -> None:
    texts = [
        single_turn("<|image_1|> a long question about the picture", has_image=True),
        single_turn("short", has_image=False),
        single_turn("<|image_1|>", has_image=True),
    ]
    batch = _process(backbone, texts, [_image(2), _image(3)])
    segments = torch.where(batch["attention_mask"].bool(), 0, -1)
    attention = segment_attention(segments, {(0, 0): "causal"})
    reference = backbone_hidden(backbone.model, batch)
    custom = backbone_hidden(backbone.model, batch, attention)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(custom[real], reference[real], rtol=1e-5, atol=1e-5)

    # Text-only batches take the other position-id path.
    batch = _process(backbone, [texts[1], single_turn("a red circle", False)], [])
    segments = torch.where(batch["attention_mask"].bool(), 0, -1)
    attention = segment_attention(segments, {(0, 0): "causal"})
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(
        backbone_hidden(backbone.model, batch, attention)[real],
        backbone_hidden(backbone.model, batch)[real],
        rtol=1e-5,
        atol=1e-5,
    )


@torch.no_grad()
def test_qwen2_5_vl_takes_the_same_4d_masks(tmp_path: Path) -> None:
    config = BackboneConfig(
        tiny=TinyBackboneConfig(family="qwen2_5_vl", hidden_size=32, vocab_size=512), **PIXELS
    )
    loaded = load_backbone(prepare_backbone(config, tmp_path / "model"), **PIXELS)
    ensure_tokens(loaded, compression_tokens(N_COMP))
    test_a_causal_4d_mask_reproduces_the_2d_path(loaded)
    test_coma_text_does_not_see_the_image_but_compression_tokens_do(loaded)
