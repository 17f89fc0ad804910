"""MuCo stage 2, guided in-context reconstruction: its template and partner masking (METHODS §1).

Each stage-2 sequence carries two ``<|emb|>``: the first after the user's text (``e``, the
single-turn embedding) and the second after the model has "rewritten" its last response as a
masked partner text and been asked to reconstruct it (``e_aux``). The query side's partner is a
masked copy of the positive text, the target side's a masked copy of the query text; an image
in the partner becomes ``Image description: {generated description}``.

The template is kept byte for byte as the reference has it, including the missing
``<|im_end|>`` after the second user turn (:data:`REWRITE_TURN`).
"""

from __future__ import annotations

import numpy as np

from muco.model import templates
from muco.model.special_tokens import (
    IMAGE_PLACEHOLDER,
    MASK_TOKEN,
    MMEB_IMAGE_PLACEHOLDER,
)

REWRITE_INSTRUCTION = "Please rewrite your last response in human-readable language."
RECONSTRUCT_INSTRUCTION = (
    "Generate a response that first reconstructs your very last response by inferring any "
    "masked information, then acknowledges or rephrases the complete what I asked you, and "
    "finally integrates the Answer information seamlessly."
)
# The reference omits <|im_end|> after this turn; released checkpoints saw it that way.
REWRITE_TURN = f"<|im_start|>user\n{REWRITE_INSTRUCTION}\n"
RECONSTRUCT_TURN = f"<|im_start|>user\n{RECONSTRUCT_INSTRUCTION}<|im_end|>\n"
IMAGE_DESCRIPTION_PREFIX = "Image description: "

WHOLE_MASK_PROBABILITY = 0.5
WORD_MASK_PROBABILITY = 0.5


def stage2_sequence(text: str, partner: str, has_image: bool) -> str:
    """The two-``<|emb|>`` stage-2 text around ``text`` (normalised like the single-turn text)
    and ``partner`` (inserted as is)::

        <|im_start|>system
        You are a helpful assistant.<|im_end|>
        <|im_start|>user
        {text}<|im_end|>
        <|im_start|>assistant
        <|emb|><|im_end|>
        <|im_start|>user
        Please rewrite your last response in human-readable language.
        <|im_start|>assistant
        {partner}<|im_end|>
        <|im_start|>user
        Generate a response that first reconstructs ... seamlessly.<|im_end|>
        <|im_start|>assistant
        <|emb|><|im_end|>
    """
    return (
        templates.single_turn(text, has_image)
        + "\n"
        + REWRITE_TURN
        + f"<|im_start|>assistant\n{partner}<|im_end|>\n"
        + RECONSTRUCT_TURN
        + templates.ASSISTANT_EMB_TURN
    )


def describe_image(text: str, description: str | None, has_image: bool) -> str:
    """Partner text for ``text``: its image, if any, becomes ``Image description: {description}``.

    The image is where the placeholder (``<|image_1|>`` or the inline vision tokens) stands, or
    in front of the text when it has an image but no placeholder (as the templates place it).
    Without a description the image is dropped. A text without an image is returned as is,
    except that stray placeholders are removed.
    """
    placeholders = (MMEB_IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER)
    if not has_image:
        for placeholder in placeholders:
            text = text.replace(placeholder, "")
        return text.strip()
    replacement = f"{IMAGE_DESCRIPTION_PREFIX}{description.strip()}\n" if description else ""
    found = False
    for placeholder in placeholders:
        if placeholder in text:
            found = True
            text = text.replace(placeholder, replacement)
    if not found:
        text = replacement + text
    return text.strip()


def mask_partner(
    text: str,
    rng: np.random.Generator,
    whole_probability: float = WHOLE_MASK_PROBABILITY,
    word_probability: float = WORD_MASK_PROBABILITY,
) -> str:
    """MuCo's partner masking: the whole text → one ``<|mask|>`` with ``whole_probability``;
    otherwise each whitespace-separated word → ``<|mask|>`` with ``word_probability``, runs of
    masked words merged into one ``<|mask|>``. Words are re-joined with single spaces.

    Draws: one uniform for the whole-text choice, then (only on the word branch) one uniform
    per word, in order; the same generator state gives the same result. An empty text stays
    empty.
    """
    words = text.split()
    if not words:
        return ""
    if rng.random() < whole_probability:
        return MASK_TOKEN
    masked = rng.random(len(words)) < word_probability
    out: list[str] = []
    for word, hidden in zip(words, masked, strict=True):
        if not hidden:
            out.append(word)
        elif not out or out[-1] != MASK_TOKEN:
            out.append(MASK_TOKEN)
    return " ".join(out)
