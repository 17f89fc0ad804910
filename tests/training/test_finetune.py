"""Which weights train: LoRA / DoRA on the language model only, the MuCo token rows, full mode."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image

from muco.config import BackboneConfig, FinetuneConfig, TinyBackboneConfig
from muco.model.backbone import prepare_backbone
from muco.model.embedder import Embedder, EmbedInput, trainable_token_ids
from muco.training.finetune import prepare_for_training

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
LANGUAGE_LAYERS = "model.language_model.layers."
VISION = "model.visual."
TOKEN_ROWS = "model.language_model.embed_tokens.token_adapter.trainable_tokens_delta.default"
ALL_TARGETS = FinetuneConfig().target_modules


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = BackboneConfig(
        tiny=TinyBackboneConfig(family=request.param, hidden_size=32, vocab_size=512), **PIXELS
    )
    return prepare_backbone(cfg, tmp_path_factory.mktemp(request.param))


@pytest.fixture
def embedder(tiny_dir: Path) -> Embedder:
    # Preparing mutates the model, so every test gets its own copy (the tiny one loads fast).
    return Embedder.from_pretrained(tiny_dir, **PIXELS)


def _batch(embedder: Embedder) -> Mapping[str, torch.Tensor]:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 84, 3), np.uint8))
    items = [EmbedInput(text="a red cube", image=image), EmbedInput(text="two blue spheres")]
    return embedder.backbone.processor(
        text=[embedder.prompt_for(item) for item in items],
        images=[image],
        padding=True,
        return_tensors="pt",
    )


def _adapted(embedder: Embedder) -> list[str]:
    model = embedder.backbone.model
    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def _linear_shapes(embedder: Embedder) -> dict[str, tuple[int, int]]:
    return {
        name: (module.in_features, module.out_features)
        for name, module in embedder.backbone.model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def test_lora_trains_only_adapters_and_the_token_rows(embedder: Embedder) -> None:
    linears = _linear_shapes(embedder)
    cfg = FinetuneConfig(mode="lora", r=4)
    summary = prepare_for_training(embedder, cfg, gradient_checkpointing=False)
    model = embedder.backbone.model
    params = dict(model.named_parameters())
    assert summary.trainable_names == [n for n, p in params.items() if p.requires_grad]
    assert summary.total == sum(p.numel() for p in params.values())
    assert TOKEN_ROWS in summary.trainable_names
    assert params[TOKEN_ROWS].shape == (2, embedder.hidden_size)
    adapters = [n for n in summary.trainable_names if n != TOKEN_ROWS]
    assert all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert not any(n.startswith(VISION) for n in summary.trainable_names)
    # r x (in + out) per adapted layer, plus the two token rows.
    expected = 2 * embedder.hidden_size + sum(
        cfg.r * (fan_in + fan_out)
        for name, (fan_in, fan_out) in linears.items()
        if name.startswith(LANGUAGE_LAYERS) and name.rpartition(".")[2] in ALL_TARGETS
    )
    assert summary.trainable == expected
    assert model.training


@pytest.mark.parametrize("targets", [("q_proj",), ("gate_proj", "down_proj")])
def test_lora_target_list_is_honoured_on_the_language_model_only(
    embedder: Embedder, targets: tuple[str, ...]
) -> None:
    layers = embedder.backbone.model.config.text_config.num_hidden_layers
    prepare_for_training(embedder, FinetuneConfig(target_modules=targets), False)
    adapted = _adapted(embedder)
    # Qwen2.5-VL's vision blocks have gate_proj / down_proj too: they must stay plain.
    assert all(name.startswith(LANGUAGE_LAYERS) for name in adapted)
    assert sorted(name.rpartition(".")[2] for name in adapted) == sorted(targets * layers)


def test_a_target_matching_no_language_layer_is_an_error(embedder: Embedder) -> None:
    # qkv exists, but only in the vision tower.
    with pytest.raises(ValueError, match="qkv"):
        prepare_for_training(embedder, FinetuneConfig(target_modules=("q_proj", "qkv")), False)


def test_dora_adds_a_magnitude_vector_per_adapted_layer(embedder: Embedder) -> None:
    summary = prepare_for_training(embedder, FinetuneConfig(mode="dora"), False)
    magnitudes = [n for n in summary.trainable_names if ".lora_magnitude_vector." in n]
    assert len(magnitudes) == len(_adapted(embedder)) > 0


def test_lora_has_no_magnitude_vectors(embedder: Embedder) -> None:
    summary = prepare_for_training(embedder, FinetuneConfig(mode="lora"), False)
    assert not [n for n in summary.trainable_names if "magnitude" in n]


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_full_mode_trains_everything_but_a_frozen_vision_tower(
    embedder: Embedder, freeze_vision: bool
) -> None:
    cfg = FinetuneConfig(mode="full", freeze_vision=freeze_vision)
    summary = prepare_for_training(embedder, cfg, False)
    names = [name for name, _ in embedder.backbone.model.named_parameters()]
    expected = [n for n in names if not (freeze_vision and n.startswith(VISION))]
    assert summary.trainable_names == expected
    assert not _adapted(embedder)


def test_lora_with_an_unfrozen_vision_tower_trains_and_checkpoints_it(embedder: Embedder) -> None:
    summary = prepare_for_training(embedder, FinetuneConfig(freeze_vision=False), True)
    model = embedder.backbone.model
    vision = [n for n, _ in model.named_parameters() if n.startswith(VISION)]
    assert set(vision) <= set(summary.trainable_names)
    assert all(block.gradient_checkpointing for block in model.model.visual.blocks)


def test_gradient_checkpointing_covers_the_language_layers(embedder: Embedder) -> None:
    prepare_for_training(embedder, FinetuneConfig(), gradient_checkpointing=True)
    layers = embedder.backbone.model.model.language_model.layers
    assert all(layer.gradient_checkpointing for layer in layers)


def test_forward_embeddings_runs_through_the_injected_adapters(embedder: Embedder) -> None:
    prepare_for_training(embedder, FinetuneConfig(), False)
    model = embedder.backbone.model.eval()  # no dropout: the comparison is exact
    batch = _batch(embedder)
    with torch.no_grad():
        before = embedder.forward_embeddings(batch)
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.fill_(0.05)  # B starts at zero: the adapters are a no-op until it moves
        after = embedder.forward_embeddings(batch)
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_one_step_moves_the_emb_row_and_no_other_row_or_vision_weight(
    embedder: Embedder, mode: str
) -> None:
    emb_id, mask_id = trainable_token_ids(embedder.backbone.processor.tokenizer)
    batch = _batch(embedder)
    other_id = int(batch["input_ids"][0, 1])  # a token the batch uses, so it would get gradient
    assert other_id not in (emb_id, mask_id)
    prepare_for_training(embedder, FinetuneConfig(mode=mode), gradient_checkpointing=True)
    model = embedder.backbone.model
    ids = torch.tensor([emb_id, other_id])

    def rows() -> torch.Tensor:
        # Through the (wrapped) embedding module: the values the model actually sees.
        with torch.no_grad():
            return model.get_input_embeddings()(ids).clone()

    vision = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(VISION)}
    rows_before = rows()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-1)
    embeddings = embedder.forward_embeddings(batch)
    (embeddings[0] @ embeddings[1] + embeddings[:, 0].sum()).backward()
    optimizer.step()
    rows_after = rows()
    assert not torch.equal(rows_before[0], rows_after[0])
    assert torch.equal(rows_before[1], rows_after[1])
    for name, param in model.named_parameters():
        if name.startswith(VISION):
            assert torch.equal(param, vision[name]), name
