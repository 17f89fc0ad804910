"""MuCo embeddings: the last-layer hidden state at each ``<|emb|>``, L2-normalised (METHODS.md §1).

Not the last token and not EOS, so one sequence can carry several embeddings (multi-turn
training) and the padding side does not matter. Inference uses the single-turn template of
:mod:`muco.model.templates` byte for byte, which keeps released MuCo checkpoints loadable.

A checkpoint says how it embeds in ``muco_embedding.json`` (:class:`Readout`, written by
``muco.training.export``): the ``<|emb|>`` readout above, or CoMa's (METHODS.md §4), the
compression prompt and the L2-normalised mean of the compression tokens' last hidden states.
Without the file (released MuCo checkpoints, stock Qwen2-VL) the readout is ``<|emb|>``.

The backbone runs through ``model.model`` (``Qwen2VLModel`` / ``Qwen2_5_VLModel``: vision tower
plus language model, returning ``last_hidden_state``), not the ``...ForConditionalGeneration``
forward, which would also project every position onto the vocabulary for logits nobody reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from muco.model import templates
from muco.model.backbone import Backbone, load_backbone
from muco.model.pooling import mean_pool
from muco.model.special_tokens import EMB_TOKEN, MASK_TOKEN, compression_tokens

# New embedding tables are padded to a multiple of this, as Qwen's own tables are.
_VOCAB_PAD_MULTIPLE = 64

# The file in a model directory that says how the model embeds (:class:`Readout`).
EMBEDDING_FILE = "muco_embedding.json"

ReadoutKind = Literal["emb", "compression_mean"]
_READOUT_KINDS: tuple[ReadoutKind, ...] = ("emb", "compression_mean")


@dataclass(frozen=True)
class EmbedInput:
    """One item to embed: text, an image (a PIL image or a file path), or both."""

    text: str | None = None
    image: Image.Image | Path | str | None = None


@dataclass(frozen=True)
class Readout:
    """How a model turns an input into one embedding, as its last training stage taught it.

    ``emb`` (MuCo, single-turn, UniME, CoCoA; METHODS.md §1): the single-turn template, the
    hidden state at its ``<|emb|>``. ``compression_mean`` (CoMa; METHODS.md §4): the compression
    prompt with ``compression_tokens`` slots, the mean of their hidden states. Both are
    L2-normalised. The template version is part of the record: an embedding is only meaningful
    under the prompt wording the model was trained on.
    """

    kind: ReadoutKind = "emb"
    compression_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _READOUT_KINDS:
            raise ValueError(f"readout kind must be one of {_READOUT_KINDS}, not {self.kind!r}")
        if self.kind == "emb" and self.compression_tokens:
            raise ValueError("the emb readout takes no compression tokens")
        if self.kind == "compression_mean" and self.compression_tokens < 1:
            raise ValueError("the compression_mean readout needs at least one compression token")

    @property
    def template_version(self) -> str:
        """The version of the prompt this readout embeds with (:mod:`muco.model.templates`)."""
        if self.kind == "emb":
            return templates.TEMPLATE_VERSION
        return templates.COMA_TEMPLATE_VERSION

    def prompt(self, text: str, has_image: bool) -> str:
        """The exact text the model sees for ``text`` (with an image when ``has_image``)."""
        if self.kind == "emb":
            return templates.single_turn(text, has_image)
        return templates.coma_prompt(text, has_image, self.compression_tokens)

    def to_json(self) -> dict[str, Any]:
        """The record of :data:`EMBEDDING_FILE`."""
        return {
            "readout": self.kind,
            "compression_tokens": self.compression_tokens,
            "template_version": self.template_version,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any], source: str = EMBEDDING_FILE) -> Readout:
        """Parse :meth:`to_json`'s record; ``ValueError`` naming ``source`` when it is not one
        this code can embed with (an unknown kind, or a template version it does not write)."""
        try:
            readout = cls(str(record["readout"]), int(record.get("compression_tokens", 0)))
            version = str(record["template_version"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not a readout record ({error})") from error
        if version != readout.template_version:
            raise ValueError(
                f"{source}: the model was trained with template {version!r}, but this code "
                f"embeds the {readout.kind} readout with {readout.template_version!r}"
            )
        return readout

    @classmethod
    def of_checkpoint(cls, path_or_id: str | Path) -> Readout:
        """The readout a model directory records; ``emb`` when it records none (released MuCo
        checkpoints, stock Qwen2-VL, and hub ids, which are not looked up)."""
        path = Path(path_or_id) / EMBEDDING_FILE
        if not path.is_file():
            return cls()
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: unreadable ({error})") from error
        return cls.from_json(record, source=str(path))


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
    """A backbone that turns items or processed batches into embeddings, by its :class:`Readout`."""

    def __init__(self, backbone: Backbone, readout: Readout | None = None) -> None:
        self.backbone = backbone
        self.readout = readout or Readout()
        tokenizer = backbone.processor.tokenizer
        self.emb_token_id = trainable_token_ids(tokenizer)[0]
        self.compression_ids = torch.tensor(
            _compression_ids(tokenizer, self.readout.compression_tokens), dtype=torch.long
        )

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, *, readout: Readout | None = None, **load_kwargs: Any
    ) -> Embedder:
        """Load through :func:`load_backbone` and add the MuCo tokens if the checkpoint lacks them.

        ``readout`` None takes the checkpoint's own (:meth:`Readout.of_checkpoint`); pass one to
        override it, e.g. ``Readout()`` to train a ``<|emb|>`` method on top of a CoMa export.
        ``load_kwargs`` are those of :func:`load_backbone` (pixel limits, dtype, attention).
        """
        if readout is None:
            readout = Readout.of_checkpoint(path_or_id)
        backbone = load_backbone(path_or_id, **load_kwargs)
        ensure_special_tokens(backbone)
        return cls(backbone, readout)

    @property
    def hidden_size(self) -> int:
        """D, the width of an embedding."""
        return self.backbone.model.config.text_config.hidden_size

    def embed_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask (B, L), true where ``<|emb|>`` sits in ``input_ids`` (B, L)."""
        return input_ids == self.emb_token_id

    def readout_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask (B, L) of the positions the readout reads: ``<|emb|>``, or the
        compression tokens."""
        if self.readout.kind == "emb":
            return self.embed_positions(input_ids)
        return torch.isin(input_ids, self.compression_ids.to(input_ids.device))

    def forward_embeddings(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings (N, D), float32, L2-normalised, with gradient, by the readout.

        ``batch`` is the processor's output (``input_ids`` and ``attention_mask`` (B, L), and
        ``pixel_values`` / ``image_grid_thw`` / ``mm_token_type_ids`` with images). ``emb``: one
        row per ``<|emb|>``, in row-major order (sample by sample, left to right within one).
        ``compression_mean``: one row per sample, the mean over its compression tokens.
        """
        inputs = dict(batch)
        if "pixel_values" not in inputs and "position_ids" not in inputs:
            inputs["position_ids"] = _text_position_ids(inputs["attention_mask"])
        hidden = self.backbone.model.model(**inputs, use_cache=False).last_hidden_state
        positions = self.readout_positions(inputs["input_ids"])
        if self.readout.kind == "emb":
            # Boolean indexing flattens in row-major order: the documented sample-then-position
            # order.
            return F.normalize(hidden[positions].float(), dim=-1)
        # Padding is never a compression token; the mask only guards against a pad id reuse.
        return mean_pool(hidden, positions & inputs["attention_mask"].bool())

    def prompt_for(self, item: EmbedInput) -> str:
        """The exact text the model sees for ``item``: :meth:`Readout.prompt`."""
        return self.readout.prompt(item.text or "", has_image=item.image is not None)

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
                    self._check_positions(batch["input_ids"], chunk)
                    out[chunk] = self.forward_embeddings(batch).cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def _check_positions(self, input_ids: torch.Tensor, indices: Sequence[int]) -> None:
        # User text may itself contain `<|emb|>` or a compression token, which tokenise to the
        # special token and would change what the readout reads.
        n = self.readout.compression_tokens
        expected, what = (n, f"{n} compression tokens") if n else (1, f"exactly one {EMB_TOKEN}")
        counts = self.readout_positions(input_ids).sum(dim=1).tolist()
        for index, count in zip(indices, counts, strict=True):
            if count != expected:
                raise ValueError(f"item {index}: expected {what}, found {count}")

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


def _compression_ids(tokenizer: Any, n: int) -> list[int]:
    """Ids of the ``n`` compression tokens (none for ``n == 0``); ``ValueError`` if missing."""
    if n == 0:
        return []
    tokens = compression_tokens(n)
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in tokens if token not in vocabulary]
    if missing:
        raise ValueError(
            f"the compression_mean readout needs {n} compression tokens, but the tokenizer "
            f"lacks {missing[0]} (and {len(missing) - 1} more)"
        )
    return [vocabulary[token] for token in tokens]
