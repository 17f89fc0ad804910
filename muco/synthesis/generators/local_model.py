"""M3T content from a local image-text-to-text checkpoint with batched ``generate``.

Any Qwen2-VL / Qwen2.5-VL Instruct-style directory loads through the project's one loader
(:func:`muco.model.backbone.load_backbone`). Each batch renders the chat template with the
image and the versioned prompt, generates with left padding, and parses each answer; answers
that are not a valid M3T JSON become counted rejections, never crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from muco.config import BackboneConfig, TransformersGenerator
from muco.model.backbone import Backbone, load_backbone
from muco.synthesis.generators.base import (
    Generator,
    Outcome,
    Rejection,
    ResultCallback,
    SynthesisInput,
    mllm_identity,
)
from muco.synthesis.parsing import ParseRejection, parse_response
from muco.synthesis.prompts import SYSTEM_PROMPT, build_prompt


class LocalMLLMGenerator(Generator):
    """Batched generation with a local checkpoint; see the module docstring."""

    kind = "transformers"

    def __init__(
        self,
        config: TransformersGenerator,
        turns: int = 7,
        paraphrases: int = 3,
        *,
        backbone: BackboneConfig | None = None,
    ) -> None:
        self.config = config
        self.turns = turns
        self.paraphrases = paraphrases
        pixels = backbone or BackboneConfig()
        self._pixels = {"min_pixels": pixels.min_pixels, "max_pixels": pixels.max_pixels}
        self._loaded: Backbone | None = None

    def identity(self) -> dict[str, Any]:
        return mllm_identity(
            self.kind, self.config.model, self.config.sampling, self.turns, self.paraphrases
        )

    def _backbone(self) -> Backbone:
        # Loaded on first use: a fully cached re-run never pays for loading the model.
        if self._loaded is None:
            self._loaded = load_backbone(self.config.model, **self._pixels)
            # Decoder-only generation continues from the last position: pad on the left.
            self._loaded.processor.tokenizer.padding_side = "left"
        return self._loaded

    def generate(self, inputs: Sequence[SynthesisInput], on_result: ResultCallback) -> None:
        size = self.config.batch_size
        for start in range(0, len(inputs), size):
            batch = list(inputs[start : start + size])
            images: list[Image.Image] = []
            ready: list[SynthesisInput] = []
            for item in batch:
                try:
                    with Image.open(item.path) as image:
                        images.append(image.convert("RGB"))
                    ready.append(item)
                except OSError as error:
                    on_result(item, Rejection("unreadable_image", f"{item.path}: {error}"))
            if ready:
                for item, text in zip(ready, self._generate_batch(images, start), strict=True):
                    on_result(item, self._parse(text))

    def _generate_batch(self, images: list[Image.Image], offset: int) -> list[str]:
        backbone = self._backbone()
        processor, model = backbone.processor, backbone.model
        prompt = build_prompt(self.turns, self.paraphrases)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = processor(
            text=[text] * len(images), images=images, return_tensors="pt", padding=True
        )
        sampling = self.config.sampling
        sample = sampling.temperature > 0
        # One seed per batch position: the same images in the same order regenerate identically.
        torch.manual_seed(sampling.seed + offset)
        with torch.no_grad():
            output = model.generate(
                **batch,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)

    def _parse(self, text: str) -> Outcome:
        try:
            return parse_response(text, self.turns, self.paraphrases)
        except ParseRejection as rejection:
            return rejection.to_rejection()
