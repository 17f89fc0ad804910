"""CoCoA's reconstruction sequence (METHODS.md §5, interpretation).

``[input][EOS][reconstruction]`` with the project's own pieces: the input is the single-turn
template up to the assistant header, EOS is the ``<|emb|>`` token (so the embedding CoCoA
trains is read exactly where ``Embedder`` reads it at inference), and the reconstruction is the
input's text (without the image) closed by ``<|im_end|>``::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    {text}<|im_end|>
    <|im_start|>assistant
    <|emb|>{text without image}<|im_end|>

Stage 2 is the plain single-turn template, contrastive on ``<|emb|>``.
"""

from __future__ import annotations

from muco.model import templates
from muco.model.special_tokens import EMB_TOKEN, IM_END
from muco.training.reconstruction import describe_image


def reconstruction_text(text: str) -> str:
    """What the reconstruction spells out: ``text`` without image placeholders, stripped."""
    return describe_image(text, None, has_image=False)


def cocoa_sequence(text: str, has_image: bool) -> str:
    """The stage-1 sequence of ``text`` (module docstring)."""
    prompt = templates.SYSTEM_TURN + templates.user_turn(templates.normalise_text(text, has_image))
    return f"{prompt}<|im_start|>assistant\n{EMB_TOKEN}{reconstruction_text(text)}{IM_END}"
