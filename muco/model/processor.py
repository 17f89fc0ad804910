"""An image-only Qwen2-VL processor on the PIL image backend.

transformers' ``Qwen2VLProcessor`` also wants a video processor, whose default backend needs
torchvision; torchvision is not installable on CPU machines here (only a CUDA build exists) and
the embedder never sees video. This subclass drops the video slot and keeps everything else:
the ``<|image_pad|>`` expansion by ``image_grid_thw``, the chat template, the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from muco.model.special_tokens import IMAGE_PAD, VIDEO_PAD

STOCK_PROCESSOR_CLASS = "Qwen2VLProcessor"


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with an image processor and a tokenizer, and no video processor."""

    def __init__(
        self,
        image_processor: Qwen2VLImageProcessorPil | None = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_token = IMAGE_PAD
        self.video_token = VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        """Save like ``Qwen2VLProcessor`` so the directory reads as a stock Qwen2-VL checkpoint.

        transformers records the saving class as ``processor_class``; a user with torchvision
        loading the directory through ``AutoProcessor`` needs the stock name, not ours.
        """
        saved = super().save_pretrained(save_directory, **kwargs)
        for name in ("processor_config.json", "tokenizer_config.json"):
            path = Path(save_directory) / name
            if path.exists():
                config = json.loads(path.read_text(encoding="utf-8"))
                config["processor_class"] = STOCK_PROCESSOR_CLASS
                path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
        return saved


def build_image_processor(min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's image processor (PIL backend) keeping images within a pixel budget."""
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
