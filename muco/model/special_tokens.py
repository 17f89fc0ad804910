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
