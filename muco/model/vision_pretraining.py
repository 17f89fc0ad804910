"""Supervised pretraining of the tiny backbone's vision tower on rendered scenes.

The backbones MuCo starts from (Qwen2-VL and its peers) bring a pretrained vision encoder; a
random one does not learn object-level features from a few hundred contrastive steps on two CPU
cores (the visual probe in ``benchmarks/visual_probe.py`` reads shape at the majority rate
before and after training; the README's Benchmarks section has the numbers). The offline stand-in
gets its encoder the way the first ViTs did, by supervised classification of labelled images:

- images: scenes rendered on the fly from their own seed under the ``train`` split's rules, so
  the held-out colour-shape pairs of ``test_unseen`` stay unseen and no scene repeats;
- labels: for each grid cell, the colour, shape and size of its object, or "empty", straight
  from the scene graph;
- model: the vision tower and merger (the visual tokens the language model reads, ``(tokens,
  hidden)`` per image) under a linear head over the flattened tokens, ``(tokens * hidden) ->
  (cells * classes)``, trained together with AdamW; the head is then discarded.

The language model is not touched. Validation scenes continue the same stream after the
training scenes, so they are unseen images; accuracies count occupied cells only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from muco.config import VisionPretrainConfig
from muco.images import scenes

EMPTY = "empty"
CELLS: tuple[tuple[int, int], ...] = tuple(scenes.CELL_NAMES)
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "colour": (EMPTY, *scenes.COLOURS),
    "shape": (EMPTY, *scenes.SHAPES),
    "size": (EMPTY, *scenes.SIZES),
}


def cell_labels(scene_list: Sequence[scenes.Scene]) -> dict[str, Tensor]:
    """Per attribute, ``(N, cells)`` class indices into :data:`ATTRIBUTE_CLASSES` (0: empty).

    Cells are in :data:`CELLS` order (row-major, top left first).
    """
    labels = {
        name: torch.zeros(len(scene_list), len(CELLS), dtype=torch.long)
        for name in ATTRIBUTE_CLASSES
    }
    for row, scene in enumerate(scene_list):
        for obj in scene.objects:
            cell = CELLS.index((obj.row, obj.col))
            for name, classes in ATTRIBUTE_CLASSES.items():
                labels[name][row, cell] = classes.index(getattr(obj, name))
    return labels


@dataclass(frozen=True)
class PretrainReport:
    """What pretraining did: steps, last-step loss, validation accuracy (%) per attribute."""

    steps: int
    scenes: int
    final_loss: float
    validation_accuracy: dict[str, float]

    def metrics(self) -> dict:
        return {
            "steps": self.steps,
            "scenes": self.scenes,
            "final_loss": round(self.final_loss, 4),
            "validation_accuracy": {k: round(v, 1) for k, v in self.validation_accuracy.items()},
        }


class _CellHead(nn.Module):
    """Flattened visual tokens ``(N, tokens * hidden)`` -> logits ``(N, cells, classes)`` per
    attribute."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.sizes = [len(classes) for classes in ATTRIBUTE_CLASSES.values()]
        self.linear = nn.Linear(features, len(CELLS) * sum(self.sizes))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        logits = self.linear(features).view(len(features), len(CELLS), sum(self.sizes))
        return dict(zip(ATTRIBUTE_CLASSES, logits.split(self.sizes, dim=-1), strict=True))


def _visual_features(model: PreTrainedModel, image_processor: object, images: list) -> Tensor:
    """``(N, tokens * hidden)``: each image's visual tokens (tower + merger), flattened."""
    inputs = image_processor(images=images, return_tensors="pt")
    tokens = model.model.get_image_features(
        inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
    ).pooler_output
    return torch.stack([t.reshape(-1) for t in tokens])


def _scenes(cfg: VisionPretrainConfig, start: int, count: int) -> list[scenes.Scene]:
    return [
        scenes.generate_scene(cfg.seed, "train", index, cfg.min_objects, cfg.max_objects)
        for index in range(start, start + count)
    ]


def _rendered(cfg: VisionPretrainConfig, batch: Sequence[scenes.Scene]) -> list:
    return [scenes.render_scene(scene, cfg.image_size) for scene in batch]


def _loss(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """Mean over attributes of the cross-entropy over every (image, cell)."""
    terms = [
        nn.functional.cross_entropy(logits[name].flatten(0, 1), labels[name].flatten())
        for name in ATTRIBUTE_CLASSES
    ]
    return torch.stack(terms).mean()


def pretrain_vision_tower(
    model: PreTrainedModel, image_processor: object, cfg: VisionPretrainConfig
) -> PretrainReport:
    """Train ``model``'s vision tower in place (module docstring); deterministic under
    ``cfg.seed``. The global torch generator is restored afterwards."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        return _pretrain(model, image_processor, cfg)
    finally:
        torch.random.set_rng_state(state)


def _pretrain(
    model: PreTrainedModel, image_processor: object, cfg: VisionPretrainConfig
) -> PretrainReport:
    visual = model.model.visual
    with torch.no_grad():  # one image, only to size the head
        probe = _visual_features(model, image_processor, _rendered(cfg, _scenes(cfg, 0, 1)))
    head = _CellHead(probe.shape[1])
    optimizer = torch.optim.AdamW([*visual.parameters(), *head.parameters()], lr=cfg.lr)
    was_training = model.training
    visual.train()
    loss = torch.tensor(float("nan"))
    for step in range(cfg.steps):
        batch = _scenes(cfg, step * cfg.batch_size, cfg.batch_size)
        features = _visual_features(model, image_processor, _rendered(cfg, batch))
        loss = _loss(head(features), cell_labels(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.train(was_training)
    seen = cfg.steps * cfg.batch_size
    validation = _scenes(cfg, seen, cfg.validation_scenes)
    with torch.no_grad():
        logits = head(_visual_features(model, image_processor, _rendered(cfg, validation)))
    labels = cell_labels(validation)
    occupied = labels["shape"] > 0
    accuracy = {
        name: 100 * float((logits[name].argmax(-1) == labels[name])[occupied].float().mean())
        for name in ATTRIBUTE_CLASSES
    }
    return PretrainReport(cfg.steps, seen, float(loss.detach()), accuracy)
