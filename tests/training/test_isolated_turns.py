"""Isolated target turns: segments, positions and, through the tiny Qwen2-VL, the defining
property that each packed turn embeds exactly as its text alone in the single-turn template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from muco.config import BackboneConfig, TinyBackboneConfig, TrainConfig
from muco.model.backbone import load_backbone, prepare_backbone
from muco.model.embedder import Embedder
from muco.model.special_tokens import IM_START
from muco.model.templates import multi_turn, single_turn
from muco.training.attention import PAD, isolated_turn_attention, turn_segments
from muco.training.collate import Collator
from muco.training.forward import restart_turn_positions
from muco.training.loop import EmbeddingModule
from muco.training.objectives.registry import build_objective
from muco.training.packing import PackedSample

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
S = 7  # the <|im_start|> id in the hand-made sequences below
TEXTS = ("red", "A small red circle in the top left cell on a white background.", "three")


def test_turn_segments_count_turn_openers_under_either_padding() -> None:
    # system(S . .) user0(S . .) assistant0(S .) user1(S .) assistant1(S .), then padding
    ids = torch.tensor([[S, 1, 1, S, 2, 2, S, 3, S, 4, S, 5, 0, 0]])
    real = torch.tensor([[1] * 12 + [0, 0]])
    expected = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, PAD, PAD]
    assert turn_segments(ids, real, S).tolist() == [expected]
    left = turn_segments(ids.roll(2, dims=1), real.roll(2, dims=1), S)
    assert left.tolist() == [[PAD, PAD, *expected[:12]]]


def test_isolated_attention_sees_the_prefix_and_its_own_turn_causally() -> None:
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, PAD]])
    allowed = isolated_turn_attention(segments)[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees itself only
    ]


def test_restarted_positions_start_every_turn_where_turn_zero_starts() -> None:
    segments = torch.tensor([[PAD, 0, 0, 1, 1, 1, 2, 2, 3], [0, 0, 1, 1, 2, 2, 2, PAD, PAD]])
    positions = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    restarted = restart_turn_positions(positions, segments)
    assert restarted.tolist() == [[0, 0, 1, 2, 3, 4, 2, 3, 2], [0, 1, 2, 3, 2, 3, 4, 7, 8]]
    # M-RoPE: an image in turn 0 spreads its components; later turns restart on turn 0's start.
    mrope = torch.stack([positions, positions, positions])
    mrope[1, 0, 4] = 9  # an image token's height component
    restarted_3d = restart_turn_positions(mrope, segments)
    assert restarted_3d.shape == (3, 2, 9)
    assert restarted_3d[1, 0, 4] == 9
    assert all(torch.equal(restarted_3d[c], restarted) for c in (0, 2))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    return prepare_backbone(config, tmp_path_factory.mktemp("tiny") / "model")


def _image(seed: int, path: Path) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _sample(texts: tuple[str, ...], image: Path | None) -> PackedSample:
    """A sample whose target side holds ``texts`` (and ``image`` in turn 0, if any)."""
    query = multi_turn(["Describe it."] * len(texts), has_image=False)
    return PackedSample(
        query_text=query,
        target_text=multi_turn(texts, has_image=image is not None),
        query_image=None,
        target_image=image,
        image_id="img",
        turn_order=tuple(range(len(texts))),
        target_texts=texts,
        turns=len(texts),
    )


def _single_turn_embedding(embedder: Embedder, text: str, image: Path | None) -> torch.Tensor:
    """``(D,)``: ``text`` (with ``image``) alone in the single-turn template."""
    batch = embedder.backbone.processor(
        text=[single_turn(text, has_image=image is not None)],
        images=[Image.open(image).convert("RGB")] if image is not None else None,
        return_tensors="pt",
    )
    return embedder.forward_embeddings(batch)[0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_isolated_turns_embed_as_their_single_turn_texts(
    tiny_dir: Path, tmp_path: Path, attn: str
) -> None:
    embedder = Embedder.from_pretrained(tiny_dir, attn_implementation=attn, **PIXELS)
    module = EmbeddingModule(embedder).eval()
    image = _image(0, tmp_path / "target.png")
    # Two samples of different lengths, so one row is padded; the first has a target image.
    samples = [_sample(TEXTS, image), _sample(("three", TEXTS[1], "blue"), None)]
    isolating = Collator(embedder.backbone.processor, isolate_target_turns=True)
    batch = isolating(samples)
    assert "turn_segments" in batch.target and "turn_segments" not in batch.query
    with torch.no_grad():
        packed = module(**batch.target)
        alone = [
            _single_turn_embedding(embedder, text, sample.target_image if turn == 0 else None)
            for sample in samples
            for turn, text in enumerate(sample.target_texts)
        ]
        causal = module(**Collator(embedder.backbone.processor)(samples).target)
    torch.testing.assert_close(packed, torch.stack(alone), atol=1e-5, rtol=1e-5)
    # Without isolation the later turns read their siblings, so they differ; the first doesn't.
    torch.testing.assert_close(causal[0], packed[0], atol=1e-5, rtol=1e-5)
    assert (causal[1:3] - packed[1:3]).abs().max() > 1e-3


def test_isolated_turns_on_a_text_only_keep_alive_batch(tiny_dir: Path) -> None:
    # ZeRO-3's keep-alive row (a blank image, no <|emb|>) is all prefix and adds no embedding.
    embedder = Embedder.from_pretrained(tiny_dir, **PIXELS)
    collator = Collator(
        embedder.backbone.processor, always_run_vision=True, isolate_target_turns=True
    )
    batch = collator([_sample(TEXTS, None)])
    segments = batch.target["turn_segments"]
    assert segments.shape[0] == 2 and set(segments[1].tolist()) <= {0, PAD}
    with torch.no_grad():
        assert EmbeddingModule(embedder)(**batch.target).shape == (3, embedder.hidden_size)


def test_muco_stage_isolates_targets_only_when_asked(training_workspace: Path) -> None:
    backbone = load_backbone(training_workspace / "backbone", **PIXELS)

    def collated(stage: dict):
        cfg = TrainConfig.model_validate(
            {"stages": [stage], "global_batch_size": 2, "micro_batch_size": 2}
        )
        objective = build_objective(
            cfg.plan()[0],
            cfg,
            backbone.processor,
            training_workspace / "m3t",
            training_workspace / "images",
            False,
        )
        return objective.collate([objective[0], objective[1]])

    isolated = collated({"method": "muco", "target_turns": "isolated", "hard_negatives": True})
    im_start = backbone.processor.tokenizer.convert_tokens_to_ids(IM_START)
    expected = turn_segments(
        isolated.target["input_ids"], isolated.target["attention_mask"], im_start
    )
    assert torch.equal(isolated.target["turn_segments"], expected)
    assert int(expected.max()) == 7
    assert "turn_segments" in isolated.negative and "turn_segments" not in isolated.query
    assert "turn_segments" not in collated({"method": "muco"}).target
    with pytest.raises(ValueError, match="target_turns"):
        TrainConfig.model_validate({"stages": [{"method": "muco", "target_turns": "open"}]})
