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
  hidden)`` per image) under a linear head, trained together with AdamW; the head is then
  discarded. ``head: flattened`` reads all tokens at once, ``(tokens * hidden) -> (cells *
  classes)``, so a cell's attributes may be spread over any tokens in any code.
  ``head: per_token`` applies one linear map ``hidden -> classes`` to every token and asks it
  for the attributes of the cell under the token's centre: each token must then carry its own
  cell's object in one code shared by all positions, which is how the language model reads
  tokens (one value projection for every position). A cell's logits are the mean over its
  tokens.
- ``token_position: true`` adds a second shared map ``hidden -> rows + cols`` that asks every
  token for its own row and column in the token grid. Qwen2-VL's tower has no absolute position
  embedding (2D rotary attention sees only offsets), and the language model's M-RoPE separates
  the columns of a small grid by under 2e-4 rad at theta 1e6, so without this target nothing a
  token carries tells the language model which cell it covers, and "the top left cell" cannot
  be read (README, Benchmarks: "Where a token is").

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
from muco.model.seeding import torch_seeded

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
    """What a pretraining did: steps, scenes seen, last-step loss, validation accuracy (%) per
    target (an attribute here, a turn kind in :mod:`muco.model.language_pretraining`)."""

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


_CLASS_COUNTS = [len(classes) for classes in ATTRIBUTE_CLASSES.values()]


def _per_attribute(logits: Tensor) -> dict[str, Tensor]:
    """Split ``(..., sum(classes))`` logits into one ``(..., classes)`` tensor per attribute."""
    return dict(zip(ATTRIBUTE_CLASSES, logits.split(_CLASS_COUNTS, dim=-1), strict=True))


def _cross_entropy(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """Mean over attributes of the cross-entropy over every ``(N, positions)`` label."""
    terms = [
        nn.functional.cross_entropy(logits[name].flatten(0, 1), labels[name].flatten())
        for name in ATTRIBUTE_CLASSES
    ]
    return torch.stack(terms).mean()


class _FlattenedHead(nn.Module):
    """Visual tokens ``(N, tokens, hidden)``, flattened -> ``(N, cells, classes)`` per
    attribute."""

    def __init__(self, tokens: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(tokens * hidden, len(CELLS) * sum(_CLASS_COUNTS))

    def cell_logits(self, tokens: Tensor) -> dict[str, Tensor]:
        return _per_attribute(self.linear(tokens.flatten(1)).view(len(tokens), len(CELLS), -1))

    def loss(self, tokens: Tensor, labels: dict[str, Tensor]) -> Tensor:
        """Cross-entropy over every (image, cell); ``labels`` as :func:`cell_labels` gives."""
        return _cross_entropy(self.cell_logits(tokens), labels)


class _PerTokenHead(nn.Module):
    """One linear map for every visual token: ``(N, tokens, hidden)`` -> ``(N, tokens,
    classes)`` per attribute, each token answering for the cell under its centre."""

    def __init__(self, token_cells: Tensor, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, sum(_CLASS_COUNTS))
        self.register_buffer("token_cells", token_cells)
        # (cells, tokens): row c averages the tokens whose centre lies in cell c.
        membership = nn.functional.one_hot(token_cells, len(CELLS)).T.float()
        self.register_buffer("cell_mean", membership / membership.sum(1, keepdim=True))

    def cell_logits(self, tokens: Tensor) -> dict[str, Tensor]:
        return _per_attribute(self.cell_mean @ self.linear(tokens))

    def loss(self, tokens: Tensor, labels: dict[str, Tensor]) -> Tensor:
        """Cross-entropy over every (image, token) against the label of the token's cell."""
        token_labels = {name: value[:, self.token_cells] for name, value in labels.items()}
        return _cross_entropy(_per_attribute(self.linear(tokens)), token_labels)


class TokenPositionHead(nn.Module):
    """One linear map for every visual token: ``(N, rows * cols, hidden)`` -> the token's own
    row ``(N, tokens, rows)`` and column ``(N, tokens, cols)`` in the token grid."""

    def __init__(self, merged_rows: int, merged_cols: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, merged_rows + merged_cols)
        self.sizes = [merged_rows, merged_cols]
        # Row-major like the merger's output: token i sits in row i // cols, column i % cols.
        self.register_buffer("rows", torch.arange(merged_rows).repeat_interleave(merged_cols))
        self.register_buffer("cols", torch.arange(merged_cols).repeat(merged_rows))

    def logits(self, tokens: Tensor) -> dict[str, Tensor]:
        row, col = self.linear(tokens).split(self.sizes, dim=-1)
        return {"token_row": row, "token_column": col}

    def targets(self, count: int) -> dict[str, Tensor]:
        """``(count, tokens)`` row and column labels."""
        return {
            "token_row": self.rows.expand(count, -1),
            "token_column": self.cols.expand(count, -1),
        }

    def loss(self, tokens: Tensor) -> Tensor:
        """Mean of the row and the column cross-entropy over every (image, token)."""
        logits, targets = self.logits(tokens), self.targets(len(tokens))
        terms = [
            nn.functional.cross_entropy(logits[name].flatten(0, 1), targets[name].flatten())
            for name in logits
        ]
        return torch.stack(terms).mean()

    def accuracy(self, tokens: Tensor) -> dict[str, float]:
        """Percent of tokens whose predicted row (column) is their own."""
        logits, targets = self.logits(tokens), self.targets(len(tokens))
        return {
            name: 100 * float((logits[name].argmax(-1) == targets[name]).float().mean())
            for name in logits
        }


def token_cells(merged_rows: int, merged_cols: int) -> Tensor:
    """``(rows * cols,)``: the grid cell (index into :data:`CELLS`) under each visual token's
    centre, tokens in row-major order as Qwen2-VL's merger emits them."""
    side = scenes.GRID_SIDE
    rows = ((torch.arange(merged_rows) + 0.5) * side / merged_rows).long()
    cols = ((torch.arange(merged_cols) + 0.5) * side / merged_cols).long()
    return (rows[:, None] * side + cols[None, :]).flatten()


def _visual_tokens(
    model: PreTrainedModel, image_processor: object, images: list
) -> tuple[Tensor, Tensor]:
    """``(N, tokens, hidden)`` visual tokens (tower + merger) and the ``(t, h, w)`` patch grid
    they come from (every image of the batch has the same size)."""
    inputs = image_processor(images=images, return_tensors="pt")
    tokens = model.model.get_image_features(
        inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
    ).pooler_output
    return torch.stack(list(tokens)), inputs["image_grid_thw"][0]


def _token_grid(model: PreTrainedModel, grid: Tensor) -> tuple[int, int]:
    """Rows and columns of merged visual tokens for a ``(t, h, w)`` patch grid."""
    merge = model.config.vision_config.spatial_merge_size
    return int(grid[1]) // merge, int(grid[2]) // merge


def _head(
    cfg: VisionPretrainConfig, model: PreTrainedModel, probe: Tensor, grid: Tensor
) -> nn.Module:
    """The head ``cfg.head`` names, sized from one probe image's ``(1, tokens, hidden)``."""
    if cfg.head == "flattened":
        return _FlattenedHead(probe.shape[1], probe.shape[2])
    rows, cols = _token_grid(model, grid)
    cells = token_cells(rows, cols)
    missing = sorted(set(range(len(CELLS))) - set(cells.tolist()))
    if missing:
        raise ValueError(
            f"backbone.tiny.pretrain_vision.head: per_token needs a visual token in every grid "
            f"cell; the processor's {rows}x{cols} token grid leaves cells {missing} without "
            f"one (give the images more pixels: backbone.min_pixels / max_pixels)"
        )
    return _PerTokenHead(cells, probe.shape[2])


def _scenes(cfg: VisionPretrainConfig, start: int, count: int) -> list[scenes.Scene]:
    return [
        scenes.generate_scene(cfg.seed, "train", index, cfg.min_objects, cfg.max_objects)
        for index in range(start, start + count)
    ]


def _rendered(cfg: VisionPretrainConfig, batch: Sequence[scenes.Scene]) -> list:
    return [scenes.render_scene(scene, cfg.image_size) for scene in batch]


def pretrain_vision_tower(
    model: PreTrainedModel, image_processor: object, cfg: VisionPretrainConfig
) -> PretrainReport:
    """Train ``model``'s vision tower in place (module docstring); deterministic under
    ``cfg.seed``. The global torch generator is restored afterwards."""
    with torch_seeded(cfg.seed):
        return _pretrain(model, image_processor, cfg)


def _pretrain(
    model: PreTrainedModel, image_processor: object, cfg: VisionPretrainConfig
) -> PretrainReport:
    visual = model.model.visual
    with torch.no_grad():  # one image, only to size the head
        probe, grid = _visual_tokens(model, image_processor, _rendered(cfg, _scenes(cfg, 0, 1)))
    heads = nn.ModuleDict({"cells": _head(cfg, model, probe, grid)})
    if cfg.token_position:
        heads["position"] = TokenPositionHead(*_token_grid(model, grid), probe.shape[2])
    optimizer = torch.optim.AdamW([*visual.parameters(), *heads.parameters()], lr=cfg.lr)
    was_training = model.training
    visual.train()
    loss = torch.tensor(float("nan"))
    for step in range(cfg.steps):
        batch = _scenes(cfg, step * cfg.batch_size, cfg.batch_size)
        tokens, _ = _visual_tokens(model, image_processor, _rendered(cfg, batch))
        loss = heads["cells"].loss(tokens, cell_labels(batch))
        if "position" in heads:
            loss = loss + heads["position"].loss(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.train(was_training)
    seen = cfg.steps * cfg.batch_size
    validation = _scenes(cfg, seen, cfg.validation_scenes)
    with torch.no_grad():
        tokens, _ = _visual_tokens(model, image_processor, _rendered(cfg, validation))
        logits = heads["cells"].cell_logits(tokens)
        position = heads["position"].accuracy(tokens) if "position" in heads else {}
    labels = cell_labels(validation)
    occupied = labels["shape"] > 0
    accuracy = {
        name: 100 * float((logits[name].argmax(-1) == labels[name])[occupied].float().mean())
        for name in ATTRIBUTE_CLASSES
    }
    accuracy.update(position)
    return PretrainReport(cfg.steps, seen, float(loss.detach()), accuracy)
