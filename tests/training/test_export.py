"""Export: adapters merged, a stock Qwen2-VL directory in safetensors, same embeddings on reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

from muco.config import BackboneConfig, FinetuneConfig, TinyBackboneConfig
from muco.model import templates
from muco.model.backbone import prepare_backbone
from muco.model.embedder import Embedder, EmbedInput
from muco.training.export import MUCO_FILE, export_model, merge_adapters
from muco.training.finetune import prepare_for_training

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = BackboneConfig(
        tiny=TinyBackboneConfig(family=request.param, hidden_size=32, vocab_size=512), **PIXELS
    )
    return prepare_backbone(cfg, tmp_path_factory.mktemp(request.param))


def _items() -> list[EmbedInput]:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 84, 3), np.uint8))
    return [
        EmbedInput(text="a red cube"),
        EmbedInput(text="what is left of the sphere?", image=image),
        EmbedInput(image=image),
    ]


def _trained(tiny_dir: Path, mode: str) -> Embedder:
    """A prepared embedder whose trainable weights all moved away from their start."""
    embedder = Embedder.from_pretrained(tiny_dir, **PIXELS)
    prepare_for_training(embedder, FinetuneConfig(mode=mode), gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in embedder.backbone.model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return embedder


def _weight_names(directory: Path) -> set[str]:
    names: set[str] = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            names.update(handle.keys())
    return names


@pytest.mark.parametrize("mode", ["lora", "dora", "full"])
def test_export_reloads_with_the_same_embeddings(tiny_dir: Path, tmp_path: Path, mode: str) -> None:
    embedder = _trained(tiny_dir, mode)
    items = _items()
    trained = embedder.encode(items)
    assert not np.allclose(trained, Embedder.from_pretrained(tiny_dir, **PIXELS).encode(items))
    out = export_model(embedder, tmp_path / "export", provenance={"run": "test"})
    # Merged in place: the in-memory embedder still gives the trained embeddings.
    np.testing.assert_allclose(embedder.encode(items), trained, atol=1e-5)
    reloaded = Embedder.from_pretrained(out, **PIXELS)
    np.testing.assert_allclose(reloaded.encode(items), trained, atol=1e-5)


def test_export_is_a_stock_checkpoint_in_safetensors(tiny_dir: Path, tmp_path: Path) -> None:
    embedder = _trained(tiny_dir, "dora")
    out = export_model(embedder, tmp_path / "export")
    family = json.loads((tiny_dir / "config.json").read_text())["model_type"]
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    assert not [p for p in out.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    # No adapter tensors left: exactly the base checkpoint's weights.
    assert _weight_names(out) == _weight_names(tiny_dir)
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["processor_class"] == "Qwen2VLProcessor"
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.model_type == family
    merged = embedder.backbone.model.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, merged[name], msg=name)


def test_muco_json_records_provenance_template_and_pixel_limits(
    tiny_dir: Path, tmp_path: Path
) -> None:
    out = export_model(_trained(tiny_dir, "lora"), tmp_path / "export", provenance={"step": 7})
    record = json.loads((out / MUCO_FILE).read_text())
    assert record["provenance"] == {"step": 7}
    assert record["template"]["text"] == templates.single_turn("{text}", has_image=False)
    assert (record["min_pixels"], record["max_pixels"]) == (
        PIXELS["min_pixels"],
        PIXELS["max_pixels"],
    )


def test_merge_leaves_no_adapter_and_is_idempotent(tiny_dir: Path) -> None:
    embedder = _trained(tiny_dir, "dora")
    model = embedder.backbone.model
    assert merge_adapters(model) > 0
    assert not hasattr(model, "peft_config")
    assert not [
        name
        for name, _ in model.named_parameters()
        if "lora_" in name or "trainable_tokens" in name
    ]
    assert merge_adapters(model) == 0
