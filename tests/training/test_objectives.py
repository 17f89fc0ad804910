"""What each objective feeds the model: sequences, labels, 4-D masks, pooled positions, and the
losses it assembles over a batch (no DeepSpeed here; the train-stage runs are in
``test_methods_stage.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muco.config import TrainConfig
from muco.model.backbone import Backbone, load_backbone
from muco.model.special_tokens import EMB_TOKEN, IM_END, MASK_TOKEN, compression_tokens
from muco.training.attention import COCOA_RECON, COMA_TEXT, cocoa_segments, coma_segments
from muco.training.feature_cache import cached_backward_sides
from muco.training.losses import muco_stage2_loss
from muco.training.objectives.registry import build_objective, stage_tokens
from muco.training.reconstruction import IMAGE_DESCRIPTION_PREFIX
from muco.training.vocab import ensure_tokens

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


@pytest.fixture(scope="module")
def backbone(training_workspace: Path) -> Backbone:
    loaded = load_backbone(training_workspace / "backbone", **PIXELS)
    ensure_tokens(loaded, compression_tokens(4))
    return loaded


def _objective(workspace: Path, backbone: Backbone, stage: dict, **train: object):
    cfg = TrainConfig.model_validate(
        {"stages": [stage], "global_batch_size": 4, "micro_batch_size": 4, **train}
    )
    return build_objective(
        cfg.plan()[0], cfg, backbone.processor, workspace / "m3t", workspace / "images", False
    )


def _unit(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def test_stage_tokens_are_the_largest_coma_stage() -> None:
    cfg = TrainConfig.model_validate(
        {
            "stages": [
                {"method": "coma_compress", "compression_tokens": 3},
                {"method": "coma_contrastive", "compression_tokens": 5},
            ]
        }
    )
    assert stage_tokens(cfg) == compression_tokens(5)
    assert stage_tokens(TrainConfig()) == []


def test_muco_stage2_samples_and_loss(training_workspace: Path, backbone: Backbone) -> None:
    objective = _objective(training_workspace, backbone, {"method": "muco_stage2"})
    assert len(objective) == 16 * 7
    samples = [objective[i] for i in (0, 1, 9, 30)]
    first = samples[0]
    assert first.query.text.count(EMB_TOKEN) == 2 and first.target.text.count(EMB_TOKEN) == 2
    assert first.query.image is not None and first.target.image is None
    assert first.negative is not None and first.negative.text.count(EMB_TOKEN) == 1
    # The target's partner is the masked query, whose image became its description.
    partners = [s.target.text.split("<|im_start|>assistant\n")[2] for s in samples]
    assert all(IMAGE_DESCRIPTION_PREFIX in p or MASK_TOKEN in p for p in partners)
    assert objective[0] == objective[0]  # reproducible

    chunk = objective.collate(samples)
    emb_id = backbone.processor.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    assert (chunk.sides["query"]["input_ids"] == emb_id).sum(dim=1).tolist() == [2] * 4
    assert (chunk.sides["negative"]["input_ids"] == emb_id).sum().item() == 4

    q, t, n = _unit(8, 6, seed=1), _unit(8, 6, seed=2), _unit(4, 6, seed=3)
    loss = objective.loss([chunk])(q, t, n)
    # Samples 0 and 1 show the same image: their targets are siblings, masked for each other.
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    texts = chunk.positive_texts
    negatives = chunk.negative_texts
    for i in range(4):
        for j in range(4):
            if i != j and texts[i].lower() == texts[j].lower():
                mask[i, j] = True
            if texts[i].lower() == negatives[j].lower():
                mask[i, 4 + j] = True
    expected = muco_stage2_loss(q[0::2], q[1::2], t[0::2], t[1::2], n, 0.02, mask)
    torch.testing.assert_close(loss, expected)


def test_muco_hard_negatives_join_every_querys_softmax(
    training_workspace: Path, backbone: Backbone
) -> None:
    objective = _objective(training_workspace, backbone, {"method": "muco", "hard_negatives": True})
    samples = [objective[i] for i in (0, 1)]
    chunk = objective.collate(samples)
    assert chunk.negative is not None and len(chunk.negative_texts) == chunk.pairs == 14

    q, t, n = _unit(14, 6, seed=4), _unit(14, 6, seed=5), _unit(14, 6, seed=6)
    loss = objective.loss([chunk])(q, t, n)
    # Columns: 14 targets, then 14 negatives. Siblings (same image, other turn) and texts equal
    # to the positive are masked; the own image's negatives stay.
    logits = torch.cat([q @ t.T, q @ n.T], dim=1) / 0.02
    ids, texts, negatives = chunk.query_image_ids, chunk.target_texts, chunk.negative_texts
    for i in range(14):
        for j in range(14):
            same_text = texts[i].lower() == texts[j].lower()
            if i != j and (ids[i] == ids[j] or same_text):
                logits[i, j] = float("-inf")
            if texts[i].lower() == negatives[j].lower():
                logits[i, 14 + j] = float("-inf")
    expected = F.cross_entropy(logits, torch.arange(14))
    torch.testing.assert_close(loss, expected)
    without = _objective(training_workspace, backbone, {"method": "muco"})
    plain = without.collate([without[i] for i in (0, 1)])
    assert plain.negative is None
    assert not torch.isclose(without.loss([plain])(q, t), loss)


def test_coma_compress_labels_and_mask(training_workspace: Path, backbone: Backbone) -> None:
    objective = _objective(
        training_workspace, backbone, {"method": "coma_compress", "compression_tokens": 4}
    )
    assert len(objective) == 16
    chunk = objective.collate([objective[0], objective[3]])
    batch = chunk.batch
    tokenizer = backbone.processor.tokenizer
    comp_ids = tokenizer.convert_tokens_to_ids(compression_tokens(4))
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert torch.isin(batch["input_ids"], torch.tensor(comp_ids)).sum(dim=1).tolist() == [4, 4]
    segments = coma_segments(batch["input_ids"], batch["attention_mask"], image_id, comp_ids)
    labelled = batch["labels"] != -100
    assert torch.equal(labelled, segments == COMA_TEXT)
    assert chunk.predicted == int(labelled[:, 1:].sum())
    attention = batch["attention_4d"]
    text = segments == COMA_TEXT
    image = batch["input_ids"] == image_id
    for row in range(2):
        assert not attention[row][text[row]][:, image[row]].any()  # text never sees the image


def test_cocoa_reconstruct_labels_spell_the_input(
    training_workspace: Path, backbone: Backbone
) -> None:
    objective = _objective(training_workspace, backbone, {"method": "cocoa_reconstruct"})
    sample = objective[5]
    chunk = objective.collate([sample])
    batch = chunk.batch
    tokenizer = backbone.processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    segments = cocoa_segments(batch["input_ids"], batch["attention_mask"], eos)
    assert torch.equal(batch["labels"] != -100, segments == COCOA_RECON)
    for row, prompt in enumerate(sample):
        reconstructed = tokenizer.decode(batch["labels"][row][batch["labels"][row] != -100])
        assert reconstructed == prompt.text.split(EMB_TOKEN, 1)[1]
        user = prompt.text.split("<|im_start|>user\n")[1].split(IM_END)[0]
        plain = user.replace("<|vision_start|><|image_pad|><|vision_end|>", "").strip()
        assert reconstructed == plain + IM_END


def test_coma_contrastive_pools_the_compression_tokens(
    training_workspace: Path, backbone: Backbone
) -> None:
    objective = _objective(
        training_workspace, backbone, {"method": "coma_contrastive", "compression_tokens": 4}
    )
    chunk = objective.collate([objective[i] for i in range(3)])
    for side in chunk.sides.values():
        assert side["pool_positions"].sum(dim=1).tolist() == [4, 4, 4]


def test_unime_distill_is_text_only_with_teacher_vectors(
    training_workspace: Path,
    backbone: Backbone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class FakeTeacher:
        identity = "fake"

        def __init__(self, *args: object) -> None:
            pass

        def encode(self, texts: list[str]) -> np.ndarray:
            rng = np.random.default_rng(len(texts))
            vectors = rng.standard_normal((len(texts), 5)).astype(np.float32)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    monkeypatch.setattr("muco.training.objectives.unime.SentenceTeacher", FakeTeacher)
    monkeypatch.setenv("MUCO_CACHE_DIR", str(tmp_path))
    objective = _objective(training_workspace, backbone, {"method": "unime_distill"})
    samples = [objective[i] for i in range(4)]
    assert all(s.query.image is None and s.target.image is None for s in samples)
    assert all("<|image_pad|>" not in s.query.text for s in samples)
    assert IMAGE_DESCRIPTION_PREFIX in samples[0].query.text
    chunk = objective.collate(samples)
    assert "pixel_values" not in chunk.sides["query"]
    assert chunk.teacher["query"].shape == (4, 5)
    # Every text of every epoch was embedded up front: another epoch's paraphrases are cached.
    objective.set_epoch(7)
    assert objective[0].teacher is not None


def test_cached_backward_over_three_sides_equals_one_graph() -> None:
    weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    sides = [
        [torch.randn(2, 4, generator=torch.Generator().manual_seed(s + c)) for c in range(2)]
        for s in range(3)
    ]

    def encode(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x @ weight, dim=-1)

    def loss_fn(q: torch.Tensor, t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return muco_stage2_loss(q, q.flip(0), t, t.flip(0), n, 0.1)

    loss = cached_backward_sides([encode] * 3, sides, loss_fn)
    cached = weight.grad.clone()
    weight.grad = None
    direct = loss_fn(*(torch.cat([encode(c) for c in chunks]) for chunks in sides))
    direct.backward()
    torch.testing.assert_close(loss, direct.detach())
    torch.testing.assert_close(cached, weight.grad)


def test_method_tokens_train_under_lora(training_workspace: Path) -> None:
    from muco.config import FinetuneConfig
    from muco.model.embedder import Embedder
    from muco.training.finetune import prepare_for_training

    embedder = Embedder.from_pretrained(training_workspace / "backbone", **PIXELS)
    extra = ensure_tokens(embedder.backbone, compression_tokens(3))
    cfg = FinetuneConfig(mode="lora", r=2, alpha=4)
    prepare_for_training(embedder, cfg, gradient_checkpointing=False, extra_token_ids=extra)
    (delta,) = [
        param
        for name, param in embedder.backbone.model.named_parameters()
        if "trainable_tokens_delta" in name
    ]
    assert delta.requires_grad and delta.shape[0] == 2 + 3  # <|emb|>, <|mask|>, 3 comp rows
