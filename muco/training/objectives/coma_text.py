"""CoMa's sequences (METHODS.md §4): the compression prompt and the stage-1 Q/A continuation.

A CoMa prompt is the single-turn layout with a "summarize" instruction after the user's content
and the n compression tokens as the assistant's answer::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    {text}{COMPRESS_INSTRUCTION}
    <|im_end|>
    <|im_start|>assistant
    <|comp_0|>...<|comp_{n-1}|><|im_end|>

Stage 1 continues with question/answer turns about the image, whose text learns by next-token
loss while it sees the image only through the compression tokens; stage 2 embeds a prompt as
the mean of the compression tokens' hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence

from muco.model import templates
from muco.model.special_tokens import compression_tokens
from muco.training.reconstruction import describe_image

COMPRESS_INSTRUCTION = "Summarize the above content in a few compressed tokens."


def coma_prompt(text: str, has_image: bool, n: int) -> str:
    """The compression prompt around ``text`` (normalised like the single-turn text)."""
    body = templates.normalise_text(text, has_image) + COMPRESS_INSTRUCTION + "\n"
    return (
        templates.SYSTEM_TURN
        + templates.user_turn(body)
        + "<|im_start|>assistant\n"
        + "".join(compression_tokens(n))
        + "<|im_end|>"
    )


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
