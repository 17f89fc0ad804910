"""Release a trained embedder as a plain Hugging Face checkpoint (METHODS.md §1).

LoRA / DoRA adapters and the trainable ``<|emb|>`` / ``<|mask|>`` rows are merged into the base
weights, so the output is a stock Qwen2-VL / Qwen2.5-VL directory: ``config.json`` keeps its
``model_type``, the weights are safetensors only, the processor is saved as the stock
``Qwen2VLProcessor`` with its tokenizer, and ``transformers.AutoModelForImageTextToText`` or
``Embedder.from_pretrained`` load it without peft. ``muco.json`` records how it was made and
the settings that change scores: the inference template and the image processor's pixel limits.
``muco_embedding.json`` (:class:`muco.model.embedder.Readout`) is what the loader reads: how the
model embeds, which the last training stage decides (:func:`training_readout`): CoMa's mean
over the compression tokens after a CoMa stage (METHODS.md §4), ``<|emb|>`` after any other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import AuxiliaryTrainingWrapper
from torch import nn

from muco.config import CoMaCompressStage, CoMaContrastiveStage, TrainConfig
from muco.io import atomic_directory, atomic_write_json
from muco.model.embedder import EMBEDDING_FILE, Embedder, Readout

MUCO_FILE = "muco.json"

# muco.json's name of each readout's prompt (the template text is recorded beside it).
_TEMPLATE_NAMES = {"emb": "single_turn", "compression_mean": "coma_prompt"}


def training_readout(cfg: TrainConfig) -> Readout:
    """How a model trained by ``cfg`` embeds: as its last stage trained it.

    A CoMa stage (either) trains the compression tokens as the image's summary, and the
    contrastive stage reads their mean (METHODS.md §4); every other method reads ``<|emb|>``
    with the single-turn template (METHODS.md §1, §3, §5).
    """
    last = cfg.stages[-1]
    if isinstance(last, CoMaCompressStage | CoMaContrastiveStage):
        return Readout("compression_mean", last.compression_tokens)
    return Readout()


def export_model(
    embedder: Embedder,
    out_dir: Path,
    *,
    provenance: dict | None = None,
    readout: Readout | None = None,
) -> Path:
    """Merge the adapters of ``embedder`` in place and save it to ``out_dir`` atomically.

    In place rather than on a copy, because the training run is over when export happens and a
    copy of a 7B model would double its memory. The embedder stays usable and gives the same
    embeddings, now from plain merged layers. ``readout`` (default: the embedder's own) is
    written to ``muco_embedding.json``; after training pass :func:`training_readout`. Call it on
    one rank only. Returns ``out_dir``, which loads with ``Embedder.from_pretrained(out_dir)``.
    """
    readout = readout or embedder.readout
    # Fails here, before anything is written, if the tokenizer lacks the readout's tokens.
    Embedder(embedder.backbone, readout)
    model = embedder.backbone.model
    merge_adapters(model)
    with atomic_directory(out_dir) as tmp:
        # transformers 5 writes safetensors only; there is no pickle format left to opt out of.
        model.save_pretrained(tmp)
        embedder.backbone.processor.save_pretrained(tmp)
        atomic_write_json(tmp / MUCO_FILE, export_metadata(embedder, provenance, readout))
        atomic_write_json(tmp / EMBEDDING_FILE, readout.to_json())
    return out_dir


def merge_adapters(model: nn.Module) -> int:
    """Fold every peft adapter of ``model`` into its base layer, in place; return how many.

    ``finetune.prepare_for_training`` injects adapters without a ``PeftModel`` wrapper, so this
    does per layer what ``merge_and_unload`` does: each outermost adapter module (a LoRA / DoRA
    layer, or the wrapper of the trainable token rows) merges and is replaced by its base layer.
    """
    adapters = [name for name, module in model.named_modules() if _is_adapter(module)]
    # Adapter modules nest (the token wrapper holds a token layer); merging the outer one suffices.
    outermost = [
        name
        for name in adapters
        if not any(name.startswith(f"{other}.") for other in adapters if other != name)
    ]
    for name in outermost:
        module = model.get_submodule(name)
        if isinstance(module, AuxiliaryTrainingWrapper):
            base = module.unload_and_optionally_merge_module(
                merge=True, safe_merge=True, adapter_names=None
            )
        else:
            module.merge(safe_merge=True)  # safe_merge: refuse NaN / inf weights
            base = module.get_base_layer()
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, base)
    if hasattr(model, "peft_config"):
        # peft leaves its configs on the injected model; the merged model has no adapters left.
        del model.peft_config
    return len(outermost)


def export_metadata(
    embedder: Embedder, provenance: dict | None, readout: Readout
) -> dict[str, Any]:
    """The ``muco.json`` record: provenance, the inference template (``readout``'s prompt), the
    pixel limits."""
    template = readout.prompt("{text}", has_image=False)
    # Qwen2-VL's image processor keeps its pixel budget as size.shortest_edge / longest_edge.
    size = embedder.backbone.processor.image_processor.size
    return {
        "provenance": provenance or {},
        "model_type": embedder.backbone.model.config.model_type,
        "template": {
            "name": _TEMPLATE_NAMES[readout.kind],
            "version": readout.template_version,
            "text": template,
            "sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        },
        "min_pixels": size.shortest_edge,
        "max_pixels": size.longest_edge,
    }


def _is_adapter(module: nn.Module) -> bool:
    return isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper)
