"""Token strings shared by the tokenizer, the templates and the embedder (METHODS.md §1)."""

from __future__ import annotations

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Qwen2-VL's special tokens after `<|endoftext|>`, in Qwen's id order.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    VISION_START,
    VISION_END,
    VISION_PAD,
    IMAGE_PAD,
    VIDEO_PAD,
)

# MuCo's additions: the embedding is the last hidden state at each `<|emb|>`; `<|mask|>` stands
# for masked partner text in stage-2 reconstruction.
EMB_TOKEN = "<|emb|>"
MASK_TOKEN = "<|mask|>"

# How an image appears inline in a prompt; MMEB text uses `<|image_1|>` as its placeholder.
IMAGE_PLACEHOLDER = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
MMEB_IMAGE_PLACEHOLDER = "<|image_1|>"

# CoMa's compression tokens (METHODS.md §4): n distinct learnable tokens `<|comp_0|>` ...
# `<|comp_{n-1}|>`, added to the tokenizer when a CoMa stage needs them. Distinct rows rather
# than one repeated token, so that the n slots differ from the first layer on, as learnable
# query tokens do; a repeated token would start n identical inputs that only RoPE tells apart.
COMP_TOKEN_FORMAT = "<|comp_{}|>"


def compression_tokens(n: int) -> list[str]:
    """The token strings of ``n`` compression slots, in order."""
    if n < 1:
        raise ValueError(f"need at least one compression token, got {n}")
    return [COMP_TOKEN_FORMAT.format(i) for i in range(n)]
