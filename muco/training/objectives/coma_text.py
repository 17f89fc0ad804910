"""CoMa's stage-1 sequence (METHODS.md §4): the compression prompt, then Q/A turns.

The compression prompt itself (:func:`muco.model.templates.coma_prompt`) lives with the other
templates, because inference embeds with it too; it is imported here for the objectives. Stage 1
continues the prompt with question/answer turns about the image, whose text learns by next-token
loss while it sees the image only through the compression tokens; stage 2 embeds a prompt as the
mean of the compression tokens' hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence

from muco.model.templates import coma_prompt
from muco.training.reconstruction import describe_image

__all__ = ["coma_dialogue", "coma_prompt"]


def coma_dialogue(text: str, has_image: bool, n: int, turns: Sequence[tuple[str, str]]) -> str:
    """Stage 1: :func:`coma_prompt` followed by ``(question, answer)`` turns; image
    placeholders in the questions are dropped (the image is in the prompt only)."""
    parts = [coma_prompt(text, has_image, n)]
    for question, answer in turns:
        question = describe_image(question, None, has_image=False)
        parts.append(
            f"\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer.strip()}<|im_end|>"
        )
    return "".join(parts)
