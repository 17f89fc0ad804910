"""One loading path for every backbone: the tiny one, a local checkpoint directory, a hub id.

Everything goes through ``from_pretrained``. The tiny backbone is first materialised on disk
with ``save_pretrained`` (:func:`prepare_backbone`), so a 2-core test and a 7B cluster run load
their models with exactly the same code (DESIGN.md rule 5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, PreTrainedModel

from muco.config import BackboneConfig
from muco.io import atomic_directory, copy_tree_linked
from muco.model.processor import ImageOnlyQwen2VLProcessor, build_image_processor

TINY = "tiny"
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Backbone:
    """A loaded multimodal LLM and the processor that prepares its inputs."""

    model: PreTrainedModel
    processor: ImageOnlyQwen2VLProcessor
    source: str


def load_backbone(
    source: str | Path,
    *,
    min_pixels: int = BackboneConfig().min_pixels,
    max_pixels: int = BackboneConfig().max_pixels,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
) -> Backbone:
    """Load model, tokenizer and image processor from a directory or hub id.

    Raises ``FileNotFoundError`` for a path-like source that does not exist (rather than
    letting transformers try it as a hub id) and ``ValueError`` for a model type other than
    Qwen2-VL / Qwen2.5-VL.
    """
    source = str(source)
    if _looks_like_path(source) and not Path(source).is_dir():
        raise FileNotFoundError(f"backbone directory not found: {source}")
    config = AutoConfig.from_pretrained(source)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type {config.model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
        )
    # use_kernels=False: transformers (5.x, with the `kernels` package it depends on) otherwise
    # swaps layers for kernels downloaded from the hub on the first train()/eval() on a GPU:
    # code fetched at run time, which fails offline and makes results depend on what the hub
    # serves that day.
    model = AutoModelForImageTextToText.from_pretrained(
        source,
        config=config,
        dtype=_DTYPES[dtype],
        attn_implementation=attn_implementation,
        use_kernels=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    image_processor = build_image_processor(min_pixels, max_pixels)
    processor = ImageOnlyQwen2VLProcessor(
        image_processor, tokenizer, chat_template=tokenizer.chat_template
    )
    return Backbone(model=model.eval(), processor=processor, source=source)


def load_backbone_from_config(path: str | Path, cfg: BackboneConfig) -> Backbone:
    """:func:`load_backbone` with the pixel limits, dtype and attention of a config section."""
    return load_backbone(
        path,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
    )


def prepare_backbone(cfg: BackboneConfig, out_dir: Path) -> Path:
    """Materialise the configured backbone as a local ``from_pretrained`` directory.

    ``tiny`` builds and saves the offline backbone; a local directory is copied (hard links
    where the filesystem allows, so a 7B checkpoint costs no space); a hub id is downloaded
    with ``huggingface_hub.snapshot_download`` (needs network access to the hub).
    """
    from muco.model.tiny import save_tiny_backbone  # only the tiny path needs the BPE trainer

    if cfg.source == TINY:
        return save_tiny_backbone(cfg, out_dir)
    if Path(cfg.source).is_dir():
        return copy_tree_linked(Path(cfg.source), out_dir)
    if _looks_like_path(cfg.source):
        raise FileNotFoundError(f"backbone.source: directory not found: {cfg.source}")
    from huggingface_hub import snapshot_download

    with atomic_directory(out_dir) as tmp:
        snapshot_download(cfg.source, local_dir=tmp)
    return out_dir


def _looks_like_path(source: str) -> bool:
    # Hub ids are `name` or `org/name`; anything absolute, relative-dotted or deeper is a path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep in source[:1]
