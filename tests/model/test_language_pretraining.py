"""Instruction tuning of the tiny backbone's language model: samples, labels, learning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from muco.config import LanguagePretrainConfig, TinyBackboneConfig
from muco.images import scenes
from muco.model.language_pretraining import (
    IGNORE_INDEX,
    answer_correct,
    collate,
    pretrain_language_model,
    prompt,
    scene_samples,
)
from muco.model.processor import ImageOnlyQwen2VLProcessor, build_image_processor
from muco.model.special_tokens import IM_END, IMAGE_PAD
from muco.model.templates import single_turn
from muco.model.tiny import LANGUAGE_PRETRAINING, build_tiny_model
from muco.model.tokenizer import train_tokenizer
from muco.stages import backbone as backbone_stage
from muco.synthesis.content import M3T_TURN_TYPES
from muco.synthesis.generators.scene_graph import content_for_scene

TINY = TinyBackboneConfig(vocab_size=512)


@pytest.fixture(scope="module")
def processor() -> ImageOnlyQwen2VLProcessor:
    tokenizer = train_tokenizer(TINY.vocab_size)
    return ImageOnlyQwen2VLProcessor(
        build_image_processor(56 * 56, 56 * 56), tokenizer, chat_template=tokenizer.chat_template
    )


def _fresh_model(processor: ImageOnlyQwen2VLProcessor) -> torch.nn.Module:
    tokenizer = processor.tokenizer
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens}
    return build_tiny_model(TINY, ids, 576)


def _scene(index: int = 0) -> scenes.Scene:
    return scenes.generate_scene(2, "train", index, 2, 5)


def test_a_scene_gives_one_sample_per_turn_kind_from_the_scene_graph_generator() -> None:
    scene = _scene()
    samples = scene_samples(scene, 2, 3, np.random.default_rng(0))
    content = content_for_scene(scene, 2, 3)
    assert [sample.turn_type for sample in samples] == list(M3T_TURN_TYPES)
    for sample, queries, answer in zip(samples, content.qry, content.pos_text, strict=True):
        assert sample.scene is scene
        assert sample.question in queries
        assert sample.answer == answer


def test_the_prompt_stops_where_the_embedding_template_writes_its_token() -> None:
    question = "<|image_1|>\nWhat colour is the background?"
    embedding_prompt = single_turn(question, has_image=True)
    assert embedding_prompt.startswith(prompt(question))
    assert embedding_prompt[len(prompt(question)) :] == "<|emb|><|im_end|>"


def test_labels_cover_exactly_the_answers_and_their_end_tokens(
    processor: ImageOnlyQwen2VLProcessor,
) -> None:
    samples = scene_samples(_scene(), 2, 3, np.random.default_rng(0))[:3]
    batch = collate(processor, samples, image_size=56)
    tokenizer = processor.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3  # 56 px: 2x2 merged tokens
    for row, sample in enumerate(samples):
        length = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert bool(batch["attention_mask"][row, :length].all())
        labelled = labels != IGNORE_INDEX
        assert tokenizer.decode(ids[labelled]) == sample.answer + IM_END
        assert torch.equal(ids[labelled], labels[labelled])
        # The labelled span is the end of the real tokens; before it is the prompt, image and all.
        assert int(labelled.nonzero().max()) == length - 1
        first_answer = int(labelled.nonzero().min())
        assert tokenizer.decode(ids[:first_answer]).endswith("<|im_start|>assistant\n")
        assert int((ids[:first_answer] == image_pad).sum()) == 4
        token_types = batch["mm_token_type_ids"][row]
        assert torch.equal(token_types.bool(), ids == image_pad)


def test_answer_correct_needs_every_answer_token() -> None:
    # Vocabulary of 3; logits at position t predict the label at t + 1.
    logits = torch.zeros(2, 4, 3)
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[:, 2:] = torch.tensor([1, 2])
    logits[0, 1, 1] = logits[0, 2, 2] = 1.0  # both answer tokens right
    logits[1, 1, 1] = logits[1, 2, 0] = 1.0  # second answer token wrong
    logits[1, 0, 2] = 1.0  # a prompt position's prediction does not count
    assert answer_correct(logits, labels).tolist() == [True, False]


def test_tuning_learns_and_leaves_the_vision_encoder_alone(
    processor: ImageOnlyQwen2VLProcessor,
) -> None:
    # Calibrated: 150 steps bring the background question (four greys, chance 25%) from 0 to
    # 53% exact match on unseen scenes and the loss from 6.37 to 0.68.
    cfg = LanguagePretrainConfig(steps=150, batch_size=4, lr=3e-3, image_size=56)
    untrained = _fresh_model(processor)
    first_step = pretrain_language_model(
        _fresh_model(processor), processor, cfg.model_copy(update={"steps": 1})
    )
    model = _fresh_model(processor)
    generator_state = torch.random.get_rng_state()
    report = pretrain_language_model(model, processor, cfg)

    assert torch.equal(torch.random.get_rng_state(), generator_state)
    assert report.final_loss < 0.5 * first_step.final_loss
    assert report.scenes == 150 * 4
    assert set(report.validation_accuracy) == {
        "classification",
        "global_vqa_1",
        "global_vqa_2",
        "local_vqa_1",
        "local_vqa_2",
        "creative_vqa",
        "retrieval",
    }
    assert report.validation_accuracy["global_vqa_2"] > 100 / len(scenes.BACKGROUNDS)
    assert first_step.validation_accuracy["global_vqa_2"] < 100 / len(scenes.BACKGROUNDS)
    before, after = untrained.state_dict(), model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any("language_model" in name for name in changed)
    assert any("lm_head" in name for name in changed)
    assert any("visual.merger" in name for name in changed)
    assert not any(".visual." in f".{name}" and "merger" not in name for name in changed)


def test_tuning_is_deterministic(processor: ImageOnlyQwen2VLProcessor) -> None:
    cfg = LanguagePretrainConfig(steps=2, batch_size=2, image_size=56, validation_scenes=2)
    a, b = _fresh_model(processor), _fresh_model(processor)
    pretrain_language_model(a, processor, cfg)
    pretrain_language_model(b, processor, cfg)
    for (name, left), right in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(left, right), name


def test_the_stage_reports_the_tuning_saved_with_the_backbone(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "backbone:\n  source: tiny\n  min_pixels: 3136\n  max_pixels: 3136\n"
        "  tiny: {hidden_size: 32, vocab_size: 512, vision_embed_dim: 16,\n"
        "         pretrain_language: {steps: 2, batch_size: 2, image_size: 56,\n"
        "                             validation_scenes: 2}}\n"
    )
    out, metrics = tmp_path / "backbone", tmp_path / "backbone.json"
    argv = ["--params", str(params), "--out", str(out), "--metrics", str(metrics)]
    assert backbone_stage.main(argv) == 0
    saved = json.loads((out / LANGUAGE_PRETRAINING).read_text())
    assert saved["config"]["steps"] == 2 and saved["scenes"] == 4
    reported = json.loads(metrics.read_text())
    assert "vision_pretraining" not in reported
    assert reported["language_pretraining"] == {
        k: saved[k] for k in ("steps", "scenes", "final_loss", "validation_accuracy")
    }
