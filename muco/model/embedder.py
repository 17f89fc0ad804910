"""MuCo embeddings: the last-layer hidden state at each ``<|emb|>``, L2-normalised (METHODS.md §1).

Not the last token and not EOS, so one sequence can carry several embeddings (multi-turn
training) and the padding side does not matter. Inference uses the single-turn template of
:mod:`muco.model.templates` byte for byte, which keeps released MuCo checkpoints loadable.

The backbone runs through ``model.model`` (``Qwen2VLModel`` / ``Qwen2_5_VLModel``: vision tower
plus language model, returning ``last_hidden_state``), not the ``...ForConditionalGeneration``
forward, which would also project every position onto the vocabulary for logits nobody reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from muco.model import templates
from muco.model.backbone import Backbone, load_backbone
from muco.model.special_tokens import EMB_TOKEN, MASK_TOKEN

# New embedding tables are padded to a multiple of this, as Qwen's own tables are.
_VOCAB_PAD_MULTIPLE = 64


@dataclass(frozen=True)
class EmbedInput:
    """One item to embed: text, an image (a PIL image or a file path), or both."""

    text: str | None = None
    image: Image.Image | Path | str | None = None


def trainable_token_ids(tokenizer: Any) -> list[int]:
    """Ids of ``<|emb|>`` and ``<|mask|>``: rows that train even under frozen embeddings / LoRA."""
    ids = tokenizer.convert_tokens_to_ids([EMB_TOKEN, MASK_TOKEN])
    # An unknown token maps to the unk id, or to None for Qwen's tokenizer, which has no unk.
    if any(token_id is None or token_id == tokenizer.unk_token_id for token_id in ids):
        raise ValueError(
            f"tokenizer lacks {EMB_TOKEN} / {MASK_TOKEN}: call ensure_special_tokens first"
        )
    return ids


def ensure_special_tokens(backbone: Backbone) -> bool:
    """Add ``<|emb|>`` and ``<|mask|>`` to a backbone that lacks them; return whether it did.

    Stock Qwen2-VL / Qwen2.5-VL checkpoints lack both tokens; the tiny backbone and released
    MuCo checkpoints have them (then this is a no-op). The embedding table only grows when the
    new ids do not fit: Qwen pads its table past the tokenizer, so the new ids usually land in
    existing, untrained padding rows. Either way the rows of the new ids, input and output, are
    set to the mean of the rows of the tokens that existed before: a neutral start that does not
    shift the model's hidden states the way a random row would (the ``<|emb|>`` row then trains).
    """
    tokenizer = backbone.processor.tokenizer
    known = len(tokenizer)
    added = tokenizer.add_special_tokens(
        {"additional_special_tokens": [EMB_TOKEN, MASK_TOKEN]},
        replace_extra_special_tokens=False,
    )
    if not added:
        return False
    model = backbone.model
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # mean_resizing would fit a full covariance over the vocabulary (costly at 150k x 3584);
        # the rows are overwritten below anyway.
        model.resize_token_embeddings(
            len(tokenizer), pad_to_multiple_of=_VOCAB_PAD_MULTIPLE, mean_resizing=False
        )
    new_ids = torch.tensor(trainable_token_ids(tokenizer))
    with torch.no_grad():
        for table in (model.get_input_embeddings(), model.get_output_embeddings()):
            if table is not None:
                table.weight[new_ids] = table.weight[:known].mean(dim=0)
    return True


class Embedder:
    """A backbone that turns items or processed batches into MuCo embeddings."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.emb_token_id = trainable_token_ids(backbone.processor.tokenizer)[0]

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, **load_kwargs: Any) -> Embedder:
        """Load through :func:`load_backbone` and add the MuCo tokens if the checkpoint lacks them.

        ``load_kwargs`` are those of :func:`load_backbone` (pixel limits, dtype, attention).
        """
        backbone = load_backbone(path_or_id, **load_kwargs)
        ensure_special_tokens(backbone)
        return cls(backbone)

    @property
    def hidden_size(self) -> int:
        """D, the width of an embedding."""
        return self.backbone.model.config.text_config.hidden_size

    def embed_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask (B, L), true where ``<|emb|>`` sits in ``input_ids`` (B, L)."""
        return input_ids == self.emb_token_id

    def forward_embeddings(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings (N_emb, D), float32, L2-normalised, with gradient.

        ``batch`` is the processor's output (``input_ids`` and ``attention_mask`` (B, L), and
        ``pixel_values`` / ``image_grid_thw`` / ``mm_token_type_ids`` with images). Rows are in
        row-major order of the ``<|emb|>`` positions: sample by sample, left to right within one.
        """
        inputs = dict(batch)
        if "pixel_values" not in inputs and "position_ids" not in inputs:
            inputs["position_ids"] = _text_position_ids(inputs["attention_mask"])
        hidden = self.backbone.model.model(**inputs, use_cache=False).last_hidden_state
        # Boolean indexing flattens in row-major order: the documented sample-then-position order.
        selected = hidden[self.embed_positions(inputs["input_ids"])]
        return F.normalize(selected.float(), dim=-1)

    def prompt_for(self, item: EmbedInput) -> str:
        """The exact text the model sees for ``item``: :func:`templates.single_turn`."""
        return templates.single_turn(item.text or "", has_image=item.image is not None)

    def encode(self, items: Sequence[EmbedInput], batch_size: int = 16) -> np.ndarray:
        """One embedding per item, (N, D) float32, in input order; no gradient, eval mode.

        Items are batched by similar length (image items first, each group longest first) so a
        batch pads little; results go back to input order. The model's train/eval mode is
        restored afterwards, so this can run in the middle of training.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.empty((len(items), self.hidden_size), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda index: _length_key(items[index]))
        model = self.backbone.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    chunk = order[start : start + batch_size]
                    batch = self._process([items[index] for index in chunk])
                    _check_one_emb_each(self.embed_positions(batch["input_ids"]), chunk)
                    out[chunk] = self.forward_embeddings(batch).cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def _process(self, items: Sequence[EmbedInput]) -> Mapping[str, torch.Tensor]:
        images = [_load_image(item.image) for item in items if item.image is not None]
        batch = self.backbone.processor(
            text=[self.prompt_for(item) for item in items],
            images=images or None,
            padding=True,
            return_tensors="pt",
        )
        return batch.to(self.backbone.model.device)


def _text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions (B, L) counting only real tokens, so left padding does not shift them.

    Without images transformers 5 numbers positions 0..L-1 regardless of padding; with images it
    derives multimodal positions from the attention mask. RoPE is relative, so the shift alone
    changes an embedding only by rounding, but that rounding grows with the offset in bf16;
    numbering real tokens from 0 (as the image path and transformers 4's ``get_rope_index`` do)
    gives the same positions under either padding side.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _length_key(item: EmbedInput) -> tuple[int, int, int]:
    # Pixels dominate an image item's token count (one token per 28 x 28 px after merging),
    # characters stand in for text tokens; both only need to order items, not count them.
    text = len(item.text or "")
    if item.image is None:
        return (1, 0, -text)
    return (0, -_pixels(item.image), -text)


def _pixels(image: Image.Image | Path | str) -> int:
    if isinstance(image, Image.Image):
        return image.width * image.height
    with Image.open(image) as opened:  # reads the header only, not the pixels
        return opened.width * opened.height


def _load_image(image: Image.Image | Path | str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    with Image.open(image) as opened:
        return opened.convert("RGB")


def _check_one_emb_each(positions: torch.Tensor, indices: Sequence[int]) -> None:
    # User text may itself contain `<|emb|>`, which tokenises to the special token.
    counts = positions.sum(dim=1).tolist()
    for index, count in zip(indices, counts, strict=True):
        if count != 1:
            raise ValueError(f"item {index}: expected exactly one {EMB_TOKEN}, found {count}")
