"""Supervised vision-tower pretraining of the tiny backbone: labels, learning, isolation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from muco.config import BackboneConfig, TinyBackboneConfig, VisionPretrainConfig
from muco.images import scenes
from muco.model.processor import build_image_processor
from muco.model.tiny import VISION_PRETRAINING, build_tiny_model, save_tiny_backbone
from muco.model.tokenizer import train_tokenizer
from muco.model.vision_pretraining import (
    ATTRIBUTE_CLASSES,
    TokenPositionHead,
    cell_labels,
    pretrain_vision_tower,
    token_cells,
)
from muco.stages import backbone as backbone_stage

TINY = TinyBackboneConfig(vocab_size=512)
PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}


def _pretrain_config(
    steps: int, head: str = "flattened", token_position: bool = False, lr: float = 2e-3
) -> VisionPretrainConfig:
    return VisionPretrainConfig(
        steps=steps,
        batch_size=32,
        lr=lr,
        image_size=112,
        head=head,
        token_position=token_position,
    )


def _fresh_model() -> torch.nn.Module:
    tokenizer = train_tokenizer(TINY.vocab_size)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    return build_tiny_model(TINY, ids, 576)


def test_cell_labels_of_a_hand_built_scene() -> None:
    star = scenes.SceneObject("star", "red", "large", 0, 0, 0.16, 0.16, 0.0)
    ring = scenes.SceneObject("ring", "blue", "small", 2, 1, 0.5, 0.83, 0.0)
    scene = scenes.Scene("train-000000", "train", "white", (star, ring))
    labels = cell_labels([scene])
    # Cells are row-major: top left is 0, bottom (row 2, col 1) is 7; 0 means empty.
    expected = {
        "colour": {
            0: 1 + list(scenes.COLOURS).index("red"),
            7: 1 + list(scenes.COLOURS).index("blue"),
        },
        "shape": {0: 1 + scenes.SHAPES.index("star"), 7: 1 + scenes.SHAPES.index("ring")},
        "size": {0: 3, 7: 1},
    }
    for name, cells in expected.items():
        assert labels[name].shape == (1, 9)
        assert labels[name][0].tolist() == [cells.get(cell, 0) for cell in range(9)], name
    assert ATTRIBUTE_CLASSES["size"] == ("empty", "small", "medium", "large")


def test_token_cells_follow_the_token_centres() -> None:
    # One merged token per cell when the grids align (84 px at 28 px per merged token).
    assert token_cells(3, 3).tolist() == list(range(9))
    # A 4x4 token grid: centres at 1/8, 3/8, 5/8, 7/8 of the side fall in rows 0, 1, 1, 2.
    assert token_cells(4, 4).view(4, 4).tolist() == [
        [0, 1, 1, 2],
        [3, 4, 4, 5],
        [3, 4, 4, 5],
        [6, 7, 7, 8],
    ]


def test_a_per_token_head_without_a_token_in_every_cell_is_refused() -> None:
    processor = build_image_processor(min_pixels=56 * 56, max_pixels=56 * 56)  # 2x2 tokens
    with pytest.raises(ValueError, match=r"per_token .* 2x2 token grid leaves cells \[1, 3, 4"):
        pretrain_vision_tower(_fresh_model(), processor, _pretrain_config(1, "per_token"))


@pytest.mark.parametrize("head", ["flattened", "per_token"])
def test_pretraining_learns_and_touches_only_the_vision_tower(head: str) -> None:
    processor = build_image_processor(**PIXELS)
    untrained = _fresh_model()
    first_step = pretrain_vision_tower(_fresh_model(), processor, _pretrain_config(1, head))
    model = _fresh_model()
    generator_state = torch.random.get_rng_state()
    report = pretrain_vision_tower(model, processor, _pretrain_config(150, head))

    assert torch.equal(torch.random.get_rng_state(), generator_state)
    # The last step's loss, against the loss at initialisation (a one-step run's only step).
    assert report.final_loss < 0.6 * first_step.final_loss
    assert report.scenes == 150 * 32
    assert set(report.validation_accuracy) == {"colour", "shape", "size"}
    assert report.validation_accuracy["colour"] > 100 / 8  # above chance on unseen scenes
    before, after = untrained.state_dict(), model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".visual." in f".{name}" for name in changed)
    assert any("merger" in name for name in changed)


def _position_probe_accuracy(model: torch.nn.Module, processor: object) -> float:
    """Percent of held-out visual tokens whose index in the token grid a linear probe, fitted
    on other scenes' tokens, reads from their content (chance: one over the token count)."""
    images = [
        scenes.render_scene(scenes.generate_scene(5, "train", index, 1, 5), 112)
        for index in range(120)
    ]
    with torch.no_grad():
        inputs = processor(images=images, return_tensors="pt")
        tokens = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        ).pooler_output
    features = torch.stack(list(tokens))
    positions = torch.arange(features.shape[1]).expand(len(features), -1)
    fit, held_out = slice(0, 90), slice(90, None)
    probe = torch.nn.Linear(features.shape[2], features.shape[1])
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(
            probe(features[fit]).flatten(0, 1), positions[fit].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predicted = probe(features[held_out]).argmax(-1)
    return 100 * float((predicted == positions[held_out]).float().mean())


def test_token_position_targets_follow_the_mergers_row_major_order() -> None:
    head = TokenPositionHead(merged_rows=2, merged_cols=3, hidden=8)
    targets = head.targets(2)
    assert targets["token_row"].tolist() == [[0, 0, 0, 1, 1, 1]] * 2
    assert targets["token_column"].tolist() == [[0, 1, 2, 0, 1, 2]] * 2
    tokens = torch.randn(2, 6, 8)
    logits = head.logits(tokens)
    by_hand = (
        torch.nn.functional.cross_entropy(
            logits["token_row"].reshape(12, 2), targets["token_row"].reshape(12)
        )
        + torch.nn.functional.cross_entropy(
            logits["token_column"].reshape(12, 3), targets["token_column"].reshape(12)
        )
    ) / 2
    torch.testing.assert_close(head.loss(tokens), by_hand)


def test_the_token_position_target_puts_each_tokens_place_into_its_content() -> None:
    # 112 px: a 4x4 token grid, so a probe at chance reads 6.25%. Calibrated: after 200 steps
    # the located tower's own head reads 97% of rows and columns and a fresh probe 95% of
    # places; the plain tower's probe reads 8.5%.
    processor = build_image_processor(**PIXELS)
    plain, located = _fresh_model(), _fresh_model()
    pretrain_vision_tower(plain, processor, _pretrain_config(200, "per_token", lr=5e-3))
    report = pretrain_vision_tower(
        located, processor, _pretrain_config(200, "per_token", token_position=True, lr=5e-3)
    )

    accuracy = report.validation_accuracy
    assert set(accuracy) == {"colour", "shape", "size", "token_row", "token_column"}
    assert min(accuracy["token_row"], accuracy["token_column"]) > 85
    # The tower's content itself now says where a token is; trained on cells alone it does not.
    assert _position_probe_accuracy(located, processor) > 80
    assert _position_probe_accuracy(plain, processor) < 25


def test_pretraining_is_deterministic() -> None:
    processor = build_image_processor(**PIXELS)
    a, b = _fresh_model(), _fresh_model()
    pretrain_vision_tower(a, processor, _pretrain_config(3))
    pretrain_vision_tower(b, processor, _pretrain_config(3))
    for (name, left), right in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(left, right), name


def test_the_stage_reports_the_pretraining_saved_with_the_backbone(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "backbone:\n  source: tiny\n  min_pixels: 3136\n  max_pixels: 3136\n"
        "  tiny: {hidden_size: 32, vocab_size: 512, vision_embed_dim: 16,\n"
        "         pretrain_vision: {steps: 2, batch_size: 4, image_size: 56}}\n"
    )
    out, metrics = tmp_path / "backbone", tmp_path / "backbone.json"
    argv = ["--params", str(params), "--out", str(out), "--metrics", str(metrics)]
    assert backbone_stage.main(argv) == 0
    saved = json.loads((out / VISION_PRETRAINING).read_text())
    assert saved["config"]["steps"] == 2 and saved["scenes"] == 8
    reported = json.loads(metrics.read_text())["vision_pretraining"]
    assert reported == {
        k: saved[k] for k in ("steps", "scenes", "final_loss", "validation_accuracy")
    }


def test_no_pretraining_saves_no_report(tmp_path: Path) -> None:
    save_tiny_backbone(BackboneConfig(tiny=TINY, **PIXELS), tmp_path / "b")
    assert not (tmp_path / "b" / VISION_PRETRAINING).exists()


def test_an_empty_object_range_is_refused() -> None:
    with pytest.raises(ValueError, match="min_objects"):
        VisionPretrainConfig(min_objects=4, max_objects=2)
