"""A Qwen2-compatible tokenizer trained offline, deterministically, on the project's own text.

No hub is reachable here, so the tiny backbone cannot borrow Qwen's 151k-token vocabulary.
Instead a byte-level BPE with Qwen2's exact pre-tokenisation (NFC, Qwen's split pattern,
byte-level alphabet) is trained on ``corpus.txt`` plus the scene-world vocabulary, and wrapped in
transformers' own ``Qwen2Tokenizer`` with Qwen's special tokens, MuCo's ``<|emb|>`` and
``<|mask|>``, and a Qwen chat template. Byte-level BPE has no unknown token: any text encodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from importlib import resources

from tokenizers import Tokenizer, trainers
from transformers import Qwen2Tokenizer

from muco.model.special_tokens import (
    EMB_TOKEN,
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    QWEN_SPECIAL_TOKENS,
)

# Qwen's chat format: a default system turn, `<|im_start|>role\n...<|im_end|>\n` per message,
# and each image content item as `<|vision_start|><|image_pad|><|vision_end|>` in place.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def training_corpus() -> Iterator[str]:
    """Lines the BPE is trained on, in a fixed order: ``corpus.txt`` then scene-world phrases."""
    from muco.images import scenes  # local: the tokenizer module must not pay for PIL at import

    text = resources.files("muco.model").joinpath("corpus.txt").read_text(encoding="utf-8")
    yield from text.splitlines()
    for shape in scenes.SHAPES:
        for colour in scenes.COLOURS:
            for size in scenes.SIZES:
                yield f"a {size} {colour} {shape}"
    yield from (f"in the {cell} of the image" for cell in scenes.CELL_NAMES.values())
    yield from (f"on a {background} background" for background in scenes.BACKGROUNDS)


def train_tokenizer(vocab_size: int, corpus: Iterable[str] | None = None) -> Qwen2Tokenizer:
    """Train the BPE and wrap it as a ``Qwen2Tokenizer`` with the chat template set.

    Deterministic: the same corpus and ``vocab_size`` give the same vocabulary and merges (the
    trainer breaks frequency ties by token order, not by hash order). ``vocab_size`` counts the
    BPE tokens before the special tokens are appended; a small corpus may yield fewer.
    """
    base = Qwen2Tokenizer()  # empty vocab, but Qwen2's normaliser and pre-tokeniser
    backend: Tokenizer = base.backend_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=_byte_alphabet(),
        special_tokens=[],
    )
    lines = list(training_corpus() if corpus is None else corpus)
    backend.train_from_iterator(lines, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = dict(model["vocab"])
    # Special tokens follow the BPE vocabulary in Qwen's id order (`<|endoftext|>` first).
    for token in (PAD_TOKEN, *QWEN_SPECIAL_TOKENS, EMB_TOKEN, MASK_TOKEN):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(pair) for pair in model["merges"]],
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=32768,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [*QWEN_SPECIAL_TOKENS, EMB_TOKEN, MASK_TOKEN]},
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())
