"""The exact prompt texts the embedders read (METHODS.md §1, §4).

Released MuCo checkpoints expect these strings byte for byte: the single-turn template for
inference and evaluation, the multi-turn layout for stage-1 pretraining. Images are inline as
``<|vision_start|><|image_pad|><|vision_end|>``; the processor expands ``<|image_pad|>`` to the
image's visual tokens. The last hidden state at every ``<|emb|>`` is an embedding.

A CoMa-trained model embeds with its own compression prompt instead (:func:`coma_prompt`): the
mean of the compression tokens' last hidden states. It lives here, not with the training code,
because inference (``muco.model.embedder``) needs it as much as training does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from muco.model.special_tokens import (
    EMB_TOKEN,
    IMAGE_PLACEHOLDER,
    MMEB_IMAGE_PLACEHOLDER,
    compression_tokens,
)

# Recorded with evaluation results and in the embedding-cache fingerprint: bump it whenever a
# string below changes, since every embedding changes with it.
TEMPLATE_VERSION = "muco-v1"
# The same for the compression prompt; exported CoMa models record it (muco_embedding.json), so
# a model trained on one wording is never silently embedded with another.
COMA_TEMPLATE_VERSION = "coma-v1"

COMPRESS_INSTRUCTION = "Summarize the above content in a few compressed tokens."

SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
ASSISTANT_EMB_TURN = f"<|im_start|>assistant\n{EMB_TOKEN}<|im_end|>"

_REPEATED_NEWLINES = re.compile(r"\n{2,}")


def normalise_text(text: str, has_image: bool) -> str:
    """Prepare user text as the reference does before templating.

    Collapses repeated newlines, appends a newline when the text lacks one, and makes the
    image placeholder consistent: MMEB's ``<|image_1|>`` becomes the inline vision tokens, and
    is dropped when there is no image. With an image but no placeholder, the image goes first.
    """
    text = _REPEATED_NEWLINES.sub("\n", text)
    if has_image:
        text = text.replace(MMEB_IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER)
        if IMAGE_PLACEHOLDER not in text:
            text = IMAGE_PLACEHOLDER + text
    else:
        text = text.replace(MMEB_IMAGE_PLACEHOLDER, "").replace(IMAGE_PLACEHOLDER, "")
    if not text.endswith("\n"):
        text += "\n"
    return text


def user_turn(text: str) -> str:
    """One user turn around already-normalised text (which ends in a newline)."""
    return f"<|im_start|>user\n{text}<|im_end|>\n"


def single_turn(text: str, has_image: bool) -> str:
    """The single-turn template: one embedding at the assistant's ``<|emb|>``.

    Exactly (``{text}`` ending in a newline)::

        <|im_start|>system
        You are a helpful assistant.<|im_end|>
        <|im_start|>user
        {text}<|im_end|>
        <|im_start|>assistant
        <|emb|><|im_end|>
    """
    return SYSTEM_TURN + user_turn(normalise_text(text, has_image)) + ASSISTANT_EMB_TURN


def multi_turn(texts: Sequence[str], has_image: bool) -> str:
    """k user turns, each answered by ``<|emb|><|im_end|>``: k embeddings in one sequence.

    The image, if any, appears once, in the first user turn; placeholders in later turns are
    removed. Turns are causal: turn j sees the image and turns before it (METHODS.md §1).
    """
    if not texts:
        raise ValueError("a multi-turn sequence needs at least one turn")
    parts = [SYSTEM_TURN]
    for index, text in enumerate(texts):
        parts.append(user_turn(normalise_text(text, has_image and index == 0)))
        parts.append(ASSISTANT_EMB_TURN + ("\n" if index < len(texts) - 1 else ""))
    return "".join(parts)


def coma_prompt(text: str, has_image: bool, n: int) -> str:
    """CoMa's compression prompt (METHODS.md §4): the single-turn layout with a "summarize"
    instruction after the user's content and the n compression tokens as the answer::

        <|im_start|>system
        You are a helpful assistant.<|im_end|>
        <|im_start|>user
        {text}{COMPRESS_INSTRUCTION}
        <|im_end|>
        <|im_start|>assistant
        <|comp_0|>...<|comp_{n-1}|><|im_end|>

    ``{text}`` is normalised as in :func:`single_turn` (so it ends in a newline).
    """
    body = normalise_text(text, has_image) + COMPRESS_INSTRUCTION + "\n"
    return (
        SYSTEM_TURN
        + user_turn(body)
        + "<|im_start|>assistant\n"
        + "".join(compression_tokens(n))
        + "<|im_end|>"
    )
