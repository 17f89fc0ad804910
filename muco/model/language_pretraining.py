"""Visual instruction tuning of the tiny backbone's language model on rendered-scene Q&A.

The backbones MuCo starts from are instruction-tuned: given an image and a question, their
language model already reads the answer off the visual tokens, and contrastive training only
has to move that answer into the ``<|emb|>`` state. The offline tiny backbone's language model is
random, and 360 contrastive steps do not teach it to bind a phrase such as "the top left cell" to
the visual token that covers it: with tokens that carry both shape and position (the visual
probe: README, Benchmarks, "Where a token is"), scenes-bench's Scenes-Shape stays at chance.
This stage gives it what LLaVA's second stage gives a real MLLM, on our own data:

- samples: scenes rendered on the fly from their own seed under the ``train`` split's rules (the
  held-out colour-shape pairs stay unseen and no scene repeats), each asked every M3T turn kind
  once by the offline scene-graph generator (:func:`content_for_scene`, one of its paraphrases
  at random), as a single-turn chat ``system, user: image + question, assistant: answer``;
- loss: next-token cross-entropy on the answer and its closing ``<|im_end|>`` only;
- parameters: the language model, its head and the vision merger (the projector into the
  language model); the vision encoder stays as :mod:`muco.model.vision_pretraining` left it.

The answer's first token is predicted at the position right before where the single-turn
embedding template puts ``<|emb|>``, so what the language model learns to gather there is what
the embedding starts from. Validation scenes continue the stream after the training scenes and
report, per turn kind, the percentage of answers whose every token the model predicts
(teacher-forced exact match).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from muco.config import LanguagePretrainConfig
from muco.images import scenes
from muco.model.seeding import torch_seeded
from muco.model.special_tokens import IM_END
from muco.model.templates import SYSTEM_TURN, normalise_text, user_turn
from muco.model.vision_pretraining import PretrainReport
from muco.synthesis.content import TurnType
from muco.synthesis.generators.scene_graph import content_for_scene

ASSISTANT_START = "<|im_start|>assistant\n"
IGNORE_INDEX = -100
# Samples per validation forward: the questions of eight scenes.
VALIDATION_BATCH = 8 * len(TurnType)


@dataclass(frozen=True)
class QASample:
    """One single-turn question about a scene and its answer; ``turn_type`` a :class:`TurnType`."""

    scene: scenes.Scene
    question: str
    answer: str
    turn_type: int


def scene_samples(
    scene: scenes.Scene, seed: int, paraphrases: int, rng: np.random.Generator
) -> list[QASample]:
    """One sample per M3T turn kind about ``scene`` (generator seed ``seed``), each with one of
    ``paraphrases`` phrasings of its question, drawn with ``rng``."""
    content = content_for_scene(scene, seed, paraphrases)
    return [
        QASample(scene, queries[int(rng.integers(len(queries)))], answer, turn_type)
        for queries, answer, turn_type in zip(
            content.qry, content.pos_text, content.turn_types, strict=True
        )
    ]


def prompt(question: str) -> str:
    """The chat prompt up to the answer: the single-turn template with the assistant's turn
    opened where the embedding template writes ``<|emb|>``."""
    return SYSTEM_TURN + user_turn(normalise_text(question, has_image=True)) + ASSISTANT_START


def collate(
    processor: ProcessorMixin, samples: Sequence[QASample], image_size: int
) -> dict[str, Tensor]:
    """Processor inputs for ``samples`` plus ``labels``: ``input_ids``, ``attention_mask`` and
    ``labels`` and ``mm_token_type_ids`` of shape ``(n, L)`` (right-padded; labels are ``-100``
    except on each answer and its ``<|im_end|>``), ``pixel_values`` and ``image_grid_thw`` for
    the n images."""
    images = [scenes.render_scene(sample.scene, image_size) for sample in samples]
    prompts = processor(
        text=[prompt(sample.question) for sample in samples],
        images=images,
        padding=True,
        return_tensors="pt",
    )
    tokenizer = processor.tokenizer
    answers = tokenizer([sample.answer + IM_END for sample in samples], add_special_tokens=False)[
        "input_ids"
    ]
    # Each row: its prompt without padding, then the answer; labels only on the answer.
    columns: dict[str, list[Tensor]] = {"input_ids": [], "labels": [], "mm_token_type_ids": []}
    for index, answer_ids in enumerate(answers):
        keep = prompts["attention_mask"][index].bool()
        question, answer = prompts["input_ids"][index][keep], torch.tensor(answer_ids)
        columns["input_ids"].append(torch.cat([question, answer]))
        columns["labels"].append(torch.cat([torch.full_like(question, IGNORE_INDEX), answer]))
        token_types = prompts["mm_token_type_ids"][index][keep]
        columns["mm_token_type_ids"].append(torch.cat([token_types, torch.zeros_like(answer)]))
    padding = {"input_ids": tokenizer.pad_token_id, "labels": IGNORE_INDEX, "mm_token_type_ids": 0}
    batch = {
        name: pad_sequence(rows, batch_first=True, padding_value=padding[name])
        for name, rows in columns.items()
    }
    lengths = torch.tensor([len(row) for row in columns["input_ids"]])
    batch["attention_mask"] = (torch.arange(lengths.max())[None] < lengths[:, None]).long()
    batch["pixel_values"] = prompts["pixel_values"]
    batch["image_grid_thw"] = prompts["image_grid_thw"]
    return batch


def answer_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """``(n,)`` booleans: every labelled token of row i is the argmax of the logits one position
    before it. ``logits`` ``(n, L, vocab)``, ``labels`` ``(n, L)`` with ``-100`` elsewhere."""
    predicted, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    wrong = (predicted != target) & (target != IGNORE_INDEX)
    return ~wrong.any(dim=1)


def trained_parameters(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """The language model, its output head and the vision merger (module docstring)."""
    return [
        *model.model.language_model.parameters(),
        *model.lm_head.parameters(),
        *model.model.visual.merger.parameters(),
    ]


def pretrain_language_model(
    model: PreTrainedModel, processor: ProcessorMixin, cfg: LanguagePretrainConfig
) -> PretrainReport:
    """Instruction-tune ``model`` in place (module docstring); deterministic under
    ``cfg.seed``. The global torch generator is restored afterwards."""
    with torch_seeded(cfg.seed):
        return _pretrain(model, processor, cfg)


def _samples(cfg: LanguagePretrainConfig, start: int, count: int) -> list[QASample]:
    return [
        sample
        for index in range(start, start + count)
        for sample in scene_samples(
            scenes.generate_scene(cfg.seed, "train", index, cfg.min_objects, cfg.max_objects),
            cfg.seed,
            cfg.paraphrases,
            np.random.default_rng([cfg.seed, index]),
        )
    ]


def _pretrain(
    model: PreTrainedModel, processor: ProcessorMixin, cfg: LanguagePretrainConfig
) -> PretrainReport:
    optimizer = torch.optim.AdamW(trained_parameters(model), lr=cfg.lr)
    was_training = model.training
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(cfg.steps):
        batch = collate(
            processor, _samples(cfg, step * cfg.batch_size, cfg.batch_size), cfg.image_size
        )
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seen = cfg.steps * cfg.batch_size
    validation = _samples(cfg, seen, cfg.validation_scenes)
    model.eval()
    correct = []
    with torch.no_grad():
        for start in range(0, len(validation), VALIDATION_BATCH):
            batch = collate(processor, validation[start : start + VALIDATION_BATCH], cfg.image_size)
            correct.append(answer_correct(model(**batch).logits, batch["labels"]))
    model.train(was_training)
    hits = torch.cat(correct)
    kinds = torch.tensor([sample.turn_type for sample in validation])
    accuracy = {
        TurnType(kind).name.lower(): 100 * float(hits[kinds == kind].float().mean())
        for kind in sorted(set(kinds.tolist()))
    }
    return PretrainReport(cfg.steps, seen, float(loss.detach()), accuracy)
