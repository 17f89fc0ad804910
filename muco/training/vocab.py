"""Adding a method's own special tokens to a loaded backbone (CoMa's compression tokens).

Like ``muco.model.embedder.ensure_special_tokens`` for ``<|emb|>`` / ``<|mask|>``: the tokens are
added to the tokenizer when missing, the embedding table grows only when the new ids do not fit
in its padding rows, and the new rows (input and output) start at the mean of the rows of the
tokens that existed before, a neutral start. The exported checkpoint then carries the tokens in
its tokenizer and their trained rows in its weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from muco.model.backbone import Backbone

_VOCAB_PAD_MULTIPLE = 64


def ensure_tokens(backbone: Backbone, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` as special tokens where missing; return the ids of all of them, in order."""
    tokenizer = backbone.processor.tokenizer
    known = len(tokenizer)
    missing = [token for token in tokens if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
        model = backbone.model
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(
                len(tokenizer), pad_to_multiple_of=_VOCAB_PAD_MULTIPLE, mean_resizing=False
            )
        new_ids = torch.tensor(tokenizer.convert_tokens_to_ids(missing))
        with torch.no_grad():
            for table in (model.get_input_embeddings(), model.get_output_embeddings()):
                if table is not None:
                    table.weight[new_ids] = table.weight[:known].mean(dim=0)
    return list(tokenizer.convert_tokens_to_ids(list(tokens)))
