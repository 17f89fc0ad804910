"""The offline tiny backbone: a small Qwen2-VL or Qwen2.5-VL built from a config.

It exists so the whole pipeline, from ``from_pretrained`` to the DeepSpeed engine, runs on a
2-core CPU without a hub (DESIGN.md, rule 5). Its weights are random, except for a vision tower
optionally pretrained on rendered scenes (:mod:`muco.model.vision_pretraining`) and a language
model optionally instruction-tuned on Q&A about them (:mod:`muco.model.language_pretraining`).
Same seeds and config give identical weights and tokenizer. The result is saved with
``save_pretrained`` and loaded back like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import (
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from muco.config import BackboneConfig, TinyBackboneConfig
from muco.io import atomic_directory, atomic_write_json
from muco.model.language_pretraining import pretrain_language_model
from muco.model.processor import ImageOnlyQwen2VLProcessor, build_image_processor
from muco.model.seeding import torch_seeded
from muco.model.special_tokens import (
    EOS_TOKEN,
    IMAGE_PAD,
    PAD_TOKEN,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
)
from muco.model.tokenizer import train_tokenizer
from muco.model.vision_pretraining import pretrain_vision_tower

# The pretraining reports, saved beside the weights they produced.
VISION_PRETRAINING = "vision_pretraining.json"
LANGUAGE_PRETRAINING = "language_pretraining.json"
PRETRAINING_REPORTS = {
    "vision_pretraining": VISION_PRETRAINING,
    "language_pretraining": LANGUAGE_PRETRAINING,
}
# Embedding tables are padded to a multiple of this, as real Qwen checkpoints are.
VOCAB_PAD_MULTIPLE = 64


def tiny_model_config(
    cfg: TinyBackboneConfig, token_ids: dict[str, int], vocab_size: int
) -> Qwen2VLConfig | Qwen2_5_VLConfig:
    """A Qwen2-VL / Qwen2.5-VL config with the sizes of ``cfg`` and the tokenizer's ids."""
    head_dim = cfg.hidden_size // cfg.num_heads
    # Multimodal RoPE splits the rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [
        half - 2 * (half // 4 + half // 8),
        half // 4 + half // 8,
        half // 4 + half // 8,
    ]
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rope_theta,
            "mrope_section": mrope_section,
        },
        "bos_token_id": token_ids[PAD_TOKEN],
        "eos_token_id": token_ids[EOS_TOKEN],
        "pad_token_id": token_ids[PAD_TOKEN],
    }
    common = {
        "image_token_id": token_ids[IMAGE_PAD],
        "video_token_id": token_ids[VIDEO_PAD],
        "vision_start_token_id": token_ids[VISION_START],
        "vision_end_token_id": token_ids[VISION_END],
        "tie_word_embeddings": False,
    }
    if cfg.family == "qwen2_vl":
        vision_config = {
            "depth": cfg.vision_depth,
            "embed_dim": cfg.vision_embed_dim,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.vision_num_heads,
            "mlp_ratio": cfg.vision_mlp_ratio,
        }
        return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **common)
    vision_config = {
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_embed_dim,
        "intermediate_size": 2 * cfg.vision_embed_dim,
        "num_heads": cfg.vision_num_heads,
        "out_hidden_size": cfg.hidden_size,
        "window_size": 56,
        "fullatt_block_indexes": [cfg.vision_depth - 1],
    }
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **common)


def build_tiny_model(
    cfg: TinyBackboneConfig, token_ids: dict[str, int], vocab_size: int
) -> PreTrainedModel:
    """Random weights drawn under ``cfg.seed``: the same seed gives bit-identical weights."""
    config = tiny_model_config(cfg, token_ids, vocab_size)
    model_class = (
        Qwen2VLForConditionalGeneration
        if cfg.family == "qwen2_vl"
        else Qwen2_5_VLForConditionalGeneration
    )
    with torch_seeded(cfg.seed):
        return model_class(config).eval()


def save_tiny_backbone(backbone: BackboneConfig, out_dir: Path) -> Path:
    """Build tokenizer, processor and model of the tiny backbone and ``save_pretrained`` them.

    With ``tiny.pretrain_vision.steps`` the vision tower is pretrained first
    (:mod:`muco.model.vision_pretraining`), then with ``tiny.pretrain_language.steps`` the
    language model is instruction-tuned (:mod:`muco.model.language_pretraining`); each report is
    saved beside the weights (:data:`PRETRAINING_REPORTS`). The directory appears atomically: a
    reader never sees a half-written backbone.
    """
    cfg = backbone.tiny
    tokenizer = train_tokenizer(cfg.vocab_size)
    token_ids = {
        token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens
    }
    padded_vocab = -(-len(tokenizer) // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    model = build_tiny_model(cfg, token_ids, padded_vocab)
    processor = ImageOnlyQwen2VLProcessor(
        build_image_processor(backbone.min_pixels, backbone.max_pixels),
        tokenizer,
        chat_template=tokenizer.chat_template,
    )
    records = {}
    if cfg.pretrain_vision.steps:
        report = pretrain_vision_tower(model, processor.image_processor, cfg.pretrain_vision)
        records[VISION_PRETRAINING] = {
            "config": cfg.pretrain_vision.model_dump(),
            **report.metrics(),
        }
    if cfg.pretrain_language.steps:
        report = pretrain_language_model(model, processor, cfg.pretrain_language)
        records[LANGUAGE_PRETRAINING] = {
            "config": cfg.pretrain_language.model_dump(),
            **report.metrics(),
        }
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name, record in records.items():
            atomic_write_json(tmp / name, record)
    return out_dir


def read_pretraining(model_dir: Path) -> dict[str, dict]:
    """The pretraining reports saved with a tiny backbone, by kind (:data:`PRETRAINING_REPORTS`
    keys); kinds that did not run are absent."""
    reports = {}
    for kind, name in PRETRAINING_REPORTS.items():
        path = Path(model_dir) / name
        if path.exists():
            reports[kind] = json.loads(path.read_text(encoding="utf-8"))
    return reports
