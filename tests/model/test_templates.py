"""The MuCo templates, byte for byte (METHODS.md §1): released checkpoints depend on them."""

from __future__ import annotations

import pytest

from muco.model.templates import multi_turn, normalise_text, single_turn

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def test_single_turn_with_image_is_exactly_the_reference_template() -> None:
    assert single_turn("<|image_1|>\nWhat is red?", has_image=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        f"{IMAGE}\nWhat is red?\n<|im_end|>\n"
        "<|im_start|>assistant\n<|emb|><|im_end|>"
    )


def test_single_turn_text_only_drops_the_placeholder_and_collapses_newlines() -> None:
    assert single_turn("<|image_1|>\n\n\nA caption.", has_image=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n\nA caption.\n<|im_end|>\n"
        "<|im_start|>assistant\n<|emb|><|im_end|>"
    )


def test_image_without_placeholder_goes_first_and_text_gets_its_newline() -> None:
    assert normalise_text("Describe it", has_image=True) == f"{IMAGE}Describe it\n"
    assert normalise_text("ends\n", has_image=False) == "ends\n"


def test_multi_turn_puts_the_image_once_in_the_first_turn() -> None:
    text = multi_turn(["<|image_1|>\nQ1", "<|image_1|>\nQ2"], has_image=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{IMAGE}\nQ1\n<|im_end|>\n"
        "<|im_start|>assistant\n<|emb|><|im_end|>\n"
        "<|im_start|>user\n\nQ2\n<|im_end|>\n"
        "<|im_start|>assistant\n<|emb|><|im_end|>"
    )
    assert text.count("<|emb|>") == 2 and text.count(IMAGE) == 1


def test_single_turn_is_the_one_turn_case_of_multi_turn() -> None:
    assert multi_turn(["x"], has_image=False) == single_turn("x", has_image=False)


def test_multi_turn_needs_a_turn() -> None:
    with pytest.raises(ValueError):
        multi_turn([], has_image=True)
