"""The offline tiny backbone: forward pass, determinism, and the save/load round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from muco.config import BackboneConfig, TinyBackboneConfig
from muco.model.backbone import Backbone, load_backbone, prepare_backbone
from muco.model.special_tokens import EMB_TOKEN, MASK_TOKEN, QWEN_SPECIAL_TOKENS
from muco.model.tokenizer import train_tokenizer

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
SINGLE_TURN = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is red?\n<|im_end|>\n"
    "<|im_start|>assistant\n<|emb|><|im_end|>\n"
)


def _config(family: str = "qwen2_vl", seed: int = 0) -> BackboneConfig:
    return BackboneConfig(tiny=TinyBackboneConfig(family=family, seed=seed), **PIXELS)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_backbone(_config(request.param), tmp_path_factory.mktemp(request.param))


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (112, 84, 3), dtype=np.uint8)) for _ in range(n)]


def _forward(backbone: Backbone, images: list[Image.Image]) -> torch.Tensor:
    texts = [
        backbone.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"x {i}"}]}],
            tokenize=False,
        )
        for i in range(len(images))
    ]
    batch = backbone.processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        return backbone.model(**batch, output_hidden_states=True).hidden_states[-1]


def test_forward_on_two_images_returns_hidden_states_deterministically(tiny_dir: Path) -> None:
    backbone = load_backbone(tiny_dir, **PIXELS)
    first = _forward(backbone, _images(2))
    second = _forward(backbone, _images(2))
    hidden = backbone.model.config.text_config.hidden_size
    assert first.shape[0] == 2 and first.shape[2] == hidden
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    # the image must matter: other pixels, other hidden states
    assert not torch.equal(first, _forward(backbone, _images(3)[1:]))


def test_save_and_load_round_trip_gives_identical_outputs(tiny_dir: Path, tmp_path: Path) -> None:
    loaded = load_backbone(tiny_dir, **PIXELS)
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    reloaded = load_backbone(tmp_path, **PIXELS)
    assert torch.equal(_forward(loaded, _images(2)), _forward(reloaded, _images(2)))
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2VLProcessor"


def test_loaded_models_never_fetch_hub_kernels(tiny_dir: Path) -> None:
    # transformers turns hub kernels on by default; on a GPU the first train()/eval() would
    # then download layer code, which an offline run cannot do and a reproducible one must not.
    model = load_backbone(tiny_dir).model
    assert model.use_kernels is False
    model.train()
    model.eval()
    assert model.use_kernels is False


def test_same_seed_gives_identical_weights_and_tokenizer(tmp_path: Path) -> None:
    a = prepare_backbone(_config(seed=3), tmp_path / "a")
    b = prepare_backbone(_config(seed=3), tmp_path / "b")
    c = prepare_backbone(_config(seed=4), tmp_path / "c")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_tokenizer_training_is_deterministic_across_processes() -> None:
    script = (
        "from muco.model.tokenizer import train_tokenizer;"
        "print(train_tokenizer(1024).backend_tokenizer.to_str())"
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout == train_tokenizer(1024).backend_tokenizer.to_str() + "\n"


def test_tokenizer_has_qwen_and_muco_special_tokens_as_single_ids() -> None:
    tokenizer = train_tokenizer(1024)
    specials = ["<|endoftext|>", *QWEN_SPECIAL_TOKENS, EMB_TOKEN, MASK_TOKEN]
    ids = tokenizer.convert_tokens_to_ids(specials)
    # Qwen's order, contiguous after the BPE vocabulary
    assert ids == list(range(ids[0], ids[0] + len(specials)))
    encoded = tokenizer(f"a{EMB_TOKEN}b{MASK_TOKEN}", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids(EMB_TOKEN) in encoded
    assert tokenizer.convert_tokens_to_ids(MASK_TOKEN) in encoded
    text = "Any text at all: ünïcödé, 数字 42 and emoji 🎈 round-trips."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chat_template_renders_muco_single_turn_template_exactly() -> None:
    tokenizer = train_tokenizer(1024)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What is red?\n"}],
        },
        {"role": "assistant", "content": EMB_TOKEN},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == SINGLE_TURN


def test_missing_backbone_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="backbone directory not found"):
        load_backbone(tmp_path / "nope" / "model")
    with pytest.raises(FileNotFoundError, match=r"backbone\.source"):
        prepare_backbone(BackboneConfig(source="./missing/checkpoint"), tmp_path / "out")


def test_non_qwen_checkpoint_is_rejected(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'llama' is not one of"):
        load_backbone(tmp_path)


_TOKEN_IDS = {
    token: index
    for index, token in enumerate(
        [
            "<|endoftext|>",
            "<|im_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<|vision_start|>",
            "<|vision_end|>",
        ]
    )
}


def test_vision_mlp_ratio_reaches_the_model_config() -> None:
    from muco.model.tiny import tiny_model_config

    config = tiny_model_config(TinyBackboneConfig(vision_mlp_ratio=4), _TOKEN_IDS, 1024)
    assert config.vision_config.mlp_ratio == 4
    assert tiny_model_config(TinyBackboneConfig(), _TOKEN_IDS, 1024).vision_config.mlp_ratio == 2


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_rope_theta_sets_the_language_models_rotary_frequencies(family: str) -> None:
    from muco.model.tiny import build_tiny_model

    cfg = TinyBackboneConfig(family=family, hidden_size=64, num_heads=2, rope_theta=10.0)
    model = build_tiny_model(cfg, _TOKEN_IDS, 1024)
    head_dim = 32
    expected = 10.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    torch.testing.assert_close(model.model.language_model.rotary_emb.inv_freq, expected)
    default = build_tiny_model(TinyBackboneConfig(family=family), _TOKEN_IDS, 1024)
    assert default.config.text_config.rope_parameters["rope_theta"] == 1_000_000.0
