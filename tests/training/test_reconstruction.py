"""MuCo stage 2's template (byte for byte, METHODS.md §1) and partner masking."""

from __future__ import annotations

import numpy as np
import pytest

from muco.model.special_tokens import MASK_TOKEN
from muco.training.reconstruction import describe_image, mask_partner, stage2_sequence

EXPECTED = (
    "<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>What is shown?\n<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<|emb|><|im_end|>\n"
    "<|im_start|>user\n"
    "Please rewrite your last response in human-readable language.\n"
    "<|im_start|>assistant\n"
    "a <|mask|> circle<|im_end|>\n"
    "<|im_start|>user\n"
    "Generate a response that first reconstructs your very last response by inferring any "
    "masked information, then acknowledges or rephrases the complete what I asked you, and "
    "finally integrates the Answer information seamlessly.<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<|emb|><|im_end|>"
)


def test_stage2_template_is_byte_exact() -> None:
    text = stage2_sequence("<|image_1|>What is shown?", "a <|mask|> circle", has_image=True)
    assert text == EXPECTED
    assert text.count("<|emb|>") == 2
    # The reference's missing <|im_end|> after the rewrite request is kept.
    assert "human-readable language.\n<|im_start|>assistant" in text


def test_stage2_template_text_side_without_image() -> None:
    text = stage2_sequence("a red circle", "<|mask|>", has_image=False)
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\na red circle\n<|im_end|>\n"
    )
    assert "<|vision_start|>" not in text


def test_describe_image_replaces_placeholders_or_prefixes() -> None:
    assert describe_image("<|image_1|>\nWhat colour?", "A red circle.", True) == (
        "Image description: A red circle.\n\nWhat colour?"
    )
    assert describe_image("What colour?", "A red circle.", True) == (
        "Image description: A red circle.\nWhat colour?"
    )
    assert describe_image("<|image_1|> What colour?", None, True) == "What colour?"
    assert describe_image("red", "unused", False) == "red"


def test_whole_mask_or_word_masks_merged() -> None:
    class Fixed:
        """A generator stand-in that replays given uniforms."""

        def __init__(self, first: float, words: list[float]) -> None:
            self.first, self.words = first, words

        def random(self, size: int | None = None):
            return self.first if size is None else np.array(self.words[:size])

    assert mask_partner("a b c", Fixed(0.1, [])) == MASK_TOKEN
    # Words 2, 3 and 5 masked: 2 and 3 merge into one mask.
    words = [0.9, 0.1, 0.2, 0.9, 0.3]
    assert mask_partner("w1 w2 w3 w4 w5", Fixed(0.7, words)) == (f"w1 {MASK_TOKEN} w4 {MASK_TOKEN}")
    assert mask_partner("", Fixed(0.1, [])) == ""


def test_masking_is_deterministic_under_a_seed() -> None:
    text = "the small red circle in the top left of the image"
    first = [mask_partner(text, np.random.default_rng([3, i])) for i in range(50)]
    again = [mask_partner(text, np.random.default_rng([3, i])) for i in range(50)]
    assert first == again
    assert len(set(first)) > 10


def test_masking_statistics_match_the_probabilities() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20)]
    text = " ".join(words)
    trials = 4000
    whole = kept = 0
    runs_merged = True
    for _ in range(trials):
        out = mask_partner(text, rng)
        if out == MASK_TOKEN:
            whole += 1
            continue
        tokens = out.split()
        kept += sum(token != MASK_TOKEN for token in tokens)
        runs_merged &= f"{MASK_TOKEN} {MASK_TOKEN}" not in out
        # Kept words keep their order.
        survivors = [token for token in tokens if token != MASK_TOKEN]
        assert survivors == [w for w in words if w in survivors]
    word_trials = trials - whole
    # Binomial standard errors: whole ~ 0.5 ± 0.008, kept-word rate ~ 0.5 ± 0.0025.
    assert whole / trials == pytest.approx(0.5, abs=0.04)
    assert kept / (word_trials * len(words)) == pytest.approx(0.5, abs=0.015)
    assert runs_merged
