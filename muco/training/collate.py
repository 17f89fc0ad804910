"""Collating packed samples into processor inputs plus the identities the loss needs.

A batch of n samples with k turns each gives n query sequences and n target sequences holding
n·k ``<|emb|>`` tokens per side. The embedder returns one row per ``<|emb|>`` in sample-major,
turn-minor order (METHODS.md §1: the embedding is the last hidden state at each ``<|emb|>``), so
the per-embedding lists here (image ids, target texts) follow that order exactly.

With ``isolate_target_turns`` the target (and hard-negative) batches also carry
``turn_segments`` (:func:`muco.training.attention.turn_segments`), from which the training
forward builds isolated-turn attention and restarted positions (:class:`muco.config.MucoStage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch import Tensor
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from muco.model.special_tokens import IM_START, IMAGE_PLACEHOLDER
from muco.training.attention import turn_segments
from muco.training.packing import PackedSample


@dataclass(frozen=True)
class CollatedBatch:
    """Processor inputs for both sides and one entry per query/target pair.

    ``query`` / ``target``: ``input_ids`` and ``attention_mask`` of shape (n, L), plus
    ``pixel_values`` (patches, C·T·P·P) and ``image_grid_thw`` (images, 3) when any sample of
    that side has an image. ``query_image_ids[j]`` / ``target_image_ids[j]`` identify the image
    behind the j-th embedding (the logit mask compares them), ``target_texts[j]`` is the raw
    positive text behind the j-th target embedding (for the duplicate-text mask); each has
    ``pairs`` = Σ turns entries. With hard negatives packed, ``negative`` is the text-only
    processor batch of the negative sequences and ``negative_texts[j]`` the raw text behind its
    j-th embedding (one per pair, same order); otherwise None and empty.
    """

    query: BatchFeature
    target: BatchFeature
    query_image_ids: list[str]
    target_image_ids: list[str]
    target_texts: list[str]
    pairs: int
    negative: BatchFeature | None = None
    negative_texts: list[str] = field(default_factory=list)


VISION_KEEPALIVE_TEXT = f"<|im_start|>user\n{IMAGE_PLACEHOLDER}<|im_end|>"
VISION_KEEPALIVE_SIDE = 56


class Collator:
    """Turns :class:`PackedSample` lists into a :class:`CollatedBatch` (a DataLoader collate_fn).

    ``max_length`` bounds each sequence's token count including the expanded image tokens; a
    longer sequence is an error, never truncated, because truncation would cut ``<|emb|>``
    tokens and silently drop pairs. ``isolate_target_turns`` adds ``turn_segments`` to the
    target and negative batches (module docstring).
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        max_length: int | None = None,
        *,
        always_run_vision: bool = False,
        isolate_target_turns: bool = False,
    ) -> None:
        self.processor = processor
        self.max_length = max_length
        self.always_run_vision = always_run_vision
        self.isolate_target_turns = isolate_target_turns

    def __call__(self, samples: Sequence[PackedSample]) -> CollatedBatch:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        query = self._encode(
            samples, "query", [s.query_text for s in samples], [s.query_image for s in samples]
        )
        target = self._encode(
            samples, "target", [s.target_text for s in samples], [s.target_image for s in samples]
        )
        negative = None
        negative_texts = [s.negative_text for s in samples]
        if any(text is not None for text in negative_texts):
            if None in negative_texts:
                raise ValueError("some samples of the batch have hard negatives and some not")
            negative = self._encode(samples, "negative", negative_texts, [None] * len(samples))
        if self.isolate_target_turns:
            for side in (target, negative):
                if side is not None:
                    side["turn_segments"] = self._turn_segments(side)
        # Each target belongs to its record's query image: the mask identity is the same.
        image_ids = [s.image_id for s in samples for _ in range(s.turns)]
        return CollatedBatch(
            query=query,
            target=target,
            query_image_ids=image_ids,
            target_image_ids=list(image_ids),
            target_texts=[text for s in samples for text in s.target_texts],
            pairs=len(image_ids),
            negative=negative,
            negative_texts=[text for s in samples for text in s.negative_texts],
        )

    def _turn_segments(self, side: BatchFeature) -> Tensor:
        im_start = self.processor.tokenizer.convert_tokens_to_ids(IM_START)
        return turn_segments(side["input_ids"], side["attention_mask"], im_start)

    def _encode(
        self,
        samples: Sequence[PackedSample],
        side: str,
        texts: Sequence[str],
        images: Sequence[Path | None],
    ) -> BatchFeature:
        """One side's processor batch: each sample's text with its image (None: text only)."""
        features = process_texts(
            self.processor,
            texts,
            [(image, s.image_id) for image, s in zip(images, samples, strict=True)],
            always_run_vision=self.always_run_vision,
        )
        if self.max_length is not None:
            lengths = features["attention_mask"].sum(dim=1).tolist()
            for index, (sample, length) in enumerate(zip(samples, lengths, strict=True)):
                if length > self.max_length:
                    raise ValueError(
                        f"{side} of sample {index} (image {sample.image_id}) has {length} "
                        f"tokens, over max_length {self.max_length}; truncating would cut "
                        "<|emb|> tokens"
                    )
        return features


def process_texts(
    processor: ProcessorMixin,
    texts: Sequence[str],
    images: Sequence[tuple[Path | None, str]],
    *,
    always_run_vision: bool = False,
) -> BatchFeature:
    """Run the processor on ``texts`` with each one's image (``(path or None, image id)``).

    Returns ``input_ids`` and ``attention_mask`` (n, L), plus ``pixel_values``,
    ``image_grid_thw`` and ``mm_token_type_ids`` when an image is present. With
    ``always_run_vision`` a text-only batch gets one extra row (module constant
    :data:`VISION_KEEPALIVE_TEXT`) with a blank image and no ``<|emb|>``.
    """
    texts = list(texts)
    # The processor pairs a flat image list with the `<|image_pad|>` occurrences in batch
    # order, so a text without an image simply contributes none.
    loaded = [_load_image(path, image_id) for path, image_id in images if path is not None]
    if always_run_vision and not loaded:
        # Under ZeRO-3 every rank must run the vision tower at the same point of the forward
        # pass (its parameters are gathered collectively). A text-only micro-batch gets one
        # extra row with a blank image and no <|emb|>: it drives the tower and, having no
        # embedding position, adds nothing to the loss.
        texts = [*texts, VISION_KEEPALIVE_TEXT]
        loaded = [Image.new("RGB", (VISION_KEEPALIVE_SIDE, VISION_KEEPALIVE_SIDE))]
    return processor(text=texts, images=loaded or None, padding=True, return_tensors="pt")


def count_tokens(batch: CollatedBatch) -> int:
    """Non-padding tokens of every side (image tokens included), for throughput logging."""
    sides = [batch.query, batch.target] + ([batch.negative] if batch.negative is not None else [])
    return int(sum(side["attention_mask"].sum() for side in sides))


def _load_image(path: Path, image_id: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            # convert() decodes every pixel, so a truncated file fails here and not in the model.
            return image.convert("RGB")
    except OSError as error:  # missing, unreadable, not an image, truncated
        raise OSError(
            f"cannot load image {path} (image {image_id}): {error}; validation should have "
            "rejected this record"
        ) from error
