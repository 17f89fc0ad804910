"""Which weights train: LoRA / DoRA adapters or the full model (METHODS.md §1, training defaults).

The reference trains DoRA adapters (r 16, α 64, dropout 0.1) on all language-model linear layers
with the vision tower frozen, and keeps the ``<|emb|>`` / ``<|mask|>`` embedding rows trainable
although the rest of the table is frozen. One of its known defects was ignoring the LoRA target
list; here ``FinetuneConfig.target_modules`` selects exactly which layers get adapters, and a
name that matches no language-model linear layer is an error rather than a silent no-op.

:func:`prepare_for_training` mutates the embedder's model in place with peft's
``inject_adapter_in_model``: no ``PeftModel`` wrapper is kept, so ``embedder.backbone.model`` stays
the ``...ForConditionalGeneration`` object, ``Embedder.forward_embeddings`` (which calls its
``.model``) runs through the injected adapters, and that same object is what the training loop
hands to DeepSpeed. :mod:`muco.training.export` folds the adapters back in for release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from muco.config import FinetuneConfig
from muco.model.embedder import Embedder, trainable_token_ids


@dataclass(frozen=True)
class TrainableSummary:
    """Parameter counts after :func:`prepare_for_training`, and the names of those that train."""

    trainable: int
    total: int
    trainable_names: list[str]


def prepare_for_training(
    embedder: Embedder,
    cfg: FinetuneConfig,
    gradient_checkpointing: bool,
    extra_token_ids: Sequence[int] = (),
) -> TrainableSummary:
    """Set up ``embedder.backbone.model`` in place for training and put it in train mode.

    The same model object stays in the embedder (adapters are injected into it, not wrapped
    around it), so the training loop passes ``embedder.backbone.model`` to DeepSpeed and
    ``embedder.forward_embeddings`` trains it. Call it once per loaded model.

    - ``full``: every parameter trains;
    - ``lora`` / ``dora``: adapters on the language model's linear layers named in
      ``cfg.target_modules`` (DoRA adds a magnitude vector per layer), everything else frozen
      except the ``<|emb|>`` / ``<|mask|>`` rows of the input embedding table. Those rows train
      through peft's ``trainable_token_indices``: a separate (2, D) parameter holding the rows'
      values, substituted into the table on every forward. The optimizer therefore only ever
      sees those two rows (no gradient hook, no masked (V, D) gradient or optimizer state), and
      weight decay, if any, pulls their values toward zero, not toward their initial values.

    ``extra_token_ids`` are more rows that train like ``<|emb|>`` / ``<|mask|>`` under adapters
    (a method's own tokens, e.g. CoMa's compression tokens).

    In every mode the vision tower is frozen when ``cfg.freeze_vision``; with adapters and
    ``freeze_vision`` false it trains fully (peft would otherwise freeze it with the base model).
    ``gradient_checkpointing`` recomputes the activations of the language model's layers (and the
    vision tower's, when it trains) in the backward pass, non-reentrant.
    """
    model = embedder.backbone.model
    if cfg.mode == "full":
        model.requires_grad_(True)
    else:
        rows = trainable_token_ids(embedder.backbone.processor.tokenizer)
        rows += [row for row in extra_token_ids if row not in rows]
        inject_adapter_in_model(_lora_config(model, cfg, rows), model)
    vision = model.model.visual
    vision.requires_grad_(not cfg.freeze_vision)
    if gradient_checkpointing:
        # transformers hooks the language model's input embeddings to require grad here, which
        # reentrant checkpointing would need on a frozen base; non-reentrant works either way.
        model.model.language_model.activation_checkpointing_enable({"use_reentrant": False})
        if not cfg.freeze_vision:
            vision.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    return summarise(model)


def summarise(model: nn.Module) -> TrainableSummary:
    """Count ``model``'s parameters and list those that require grad, in registration order."""
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    total = sum(param.numel() for param in model.parameters())
    return TrainableSummary(trainable=trainable, total=total, trainable_names=names)


def lora_target_names(model: nn.Module, target_modules: tuple[str, ...]) -> list[str]:
    """Full names of the language model's linear layers whose last name is in ``target_modules``.

    Full names rather than peft's suffix matching, because Qwen2.5-VL's vision blocks have their
    own ``gate_proj`` / ``up_proj`` / ``down_proj`` and all vision blocks a ``proj``. Raises
    ``ValueError`` naming every entry of ``target_modules`` that matches nothing.
    """
    layers = _module_name(model, model.model.language_model.layers)
    names = [
        name
        for name, module in model.named_modules()
        if name.startswith(f"{layers}.")
        and isinstance(module, nn.Linear)
        and name.rpartition(".")[2] in target_modules
    ]
    unmatched = sorted(set(target_modules) - {name.rpartition(".")[2] for name in names})
    if unmatched:
        raise ValueError(
            f"finetune.target_modules: {unmatched} match no linear layer of the language model"
        )
    return names


def _lora_config(model: nn.Module, cfg: FinetuneConfig, rows: list[int]) -> LoraConfig:
    embedding = _module_name(model, model.get_input_embeddings())
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_names(model, cfg.target_modules),
        use_dora=cfg.mode == "dora",
        trainable_token_indices={embedding: rows},
    )


def _module_name(model: nn.Module, target: nn.Module) -> str:
    # By identity, so the names hold whatever transformers calls the submodules' attributes.
    return next(name for name, module in model.named_modules() if module is target)
