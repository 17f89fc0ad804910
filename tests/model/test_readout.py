"""How an exported model embeds: ``muco_embedding.json`` and the readout it selects.

A CoMa-trained model embeds with the compression prompt and the mean of the compression tokens'
hidden states (METHODS.md §4); every other model, and any directory without the file (released
MuCo checkpoints, stock Qwen2-VL), with the single-turn ``<|emb|>`` readout (METHODS.md §1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from muco.config import BackboneConfig, TinyBackboneConfig, TrainConfig
from muco.evaluation.model_spec import ModelSpec
from muco.model import templates
from muco.model.backbone import prepare_backbone
from muco.model.embedder import EMBEDDING_FILE, Embedder, EmbedInput, Readout
from muco.model.pooling import mean_pool
from muco.model.special_tokens import EMB_TOKEN, compression_tokens
from muco.training.export import MUCO_FILE, export_model, training_readout
from muco.training.forward import backbone_hidden, token_embeddings
from muco.training.vocab import ensure_tokens

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
N = 4  # compression tokens of the CoMa model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=32, vocab_size=512), **PIXELS)
    return prepare_backbone(cfg, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def coma_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a CoMa export: compression tokens with distinct rows (as training would
    leave them; freshly added rows are all equal) and a compression_mean readout."""
    embedder = Embedder.from_pretrained(tiny_dir, **PIXELS)
    ids = ensure_tokens(embedder.backbone, compression_tokens(N))
    table = embedder.backbone.model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        table[ids] += 0.5 * torch.randn((N, table.shape[1]), generator=generator)
    out = tmp_path_factory.mktemp("coma") / "model"
    return export_model(embedder, out, readout=Readout("compression_mean", N))


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8))


def _items() -> list[EmbedInput]:
    return [
        EmbedInput(text="a small red circle"),
        EmbedInput(text="<|image_1|> what colour is the square?", image=_image(1)),
        EmbedInput(image=_image(2)),
        EmbedInput(text="a considerably longer caption with many more words than the others"),
    ]


def _manual(embedder: Embedder, item: EmbedInput, prompt: str, pool: str) -> np.ndarray:
    """One item's embedding computed through muco.training.forward, as training reads it."""
    images = [item.image] if item.image is not None else None
    batch = embedder.backbone.processor(text=[prompt], images=images, return_tensors="pt")
    model = embedder.backbone.model
    with torch.no_grad():
        hidden = backbone_hidden(model, batch)
        ids = batch["input_ids"]
        if pool == "mean":
            comp = torch.tensor(
                embedder.backbone.processor.tokenizer.convert_tokens_to_ids(compression_tokens(N))
            )
            rows = mean_pool(hidden, torch.isin(ids, comp))
        else:
            rows = token_embeddings(hidden, ids == embedder.emb_token_id)
    assert rows.shape[0] == 1
    return rows[0].numpy()


def test_a_coma_export_embeds_by_the_mean_of_its_compression_tokens(coma_dir: Path) -> None:
    record = json.loads((coma_dir / EMBEDDING_FILE).read_text())
    assert record == {
        "readout": "compression_mean",
        "compression_tokens": N,
        "template_version": templates.COMA_TEMPLATE_VERSION,
    }
    embedder = Embedder.from_pretrained(coma_dir, **PIXELS)
    assert embedder.readout == Readout("compression_mean", N)
    items = _items()
    prompts = [embedder.prompt_for(item) for item in items]
    assert prompts == [
        templates.coma_prompt(item.text or "", item.image is not None, N) for item in items
    ]
    assert EMB_TOKEN not in "".join(prompts)
    encoded = embedder.encode(items, batch_size=3)  # batched and padded, in input order
    manual = np.stack(
        [
            _manual(embedder, item, prompt, "mean")
            for item, prompt in zip(items, prompts, strict=True)
        ]
    )
    np.testing.assert_allclose(encoded, manual, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(encoded, axis=1), 1.0, atol=1e-5)


def test_a_model_without_the_file_reads_emb_with_the_single_turn_template(
    coma_dir: Path, tmp_path: Path
) -> None:
    # The same weights and tokenizer as the CoMa export, only the file removed.
    plain = tmp_path / "plain"
    shutil.copytree(coma_dir, plain)
    (plain / EMBEDDING_FILE).unlink()
    embedder = Embedder.from_pretrained(plain, **PIXELS)
    assert embedder.readout == Readout()
    items = _items()
    prompts = [embedder.prompt_for(item) for item in items]
    assert prompts == [templates.single_turn(i.text or "", i.image is not None) for i in items]
    encoded = embedder.encode(items)
    manual = np.stack([_manual(embedder, i, p, "emb") for i, p in zip(items, prompts, strict=True)])
    np.testing.assert_allclose(encoded, manual, atol=1e-5)
    coma = Embedder.from_pretrained(coma_dir, **PIXELS).encode(items)
    assert not np.allclose(encoded, coma, atol=1e-3)


def test_an_explicit_readout_overrides_the_file(coma_dir: Path) -> None:
    embedder = Embedder.from_pretrained(coma_dir, readout=Readout(), **PIXELS)
    assert embedder.prompt_for(EmbedInput(text="x")) == templates.single_turn("x", False)


def test_training_readout_follows_the_last_stage() -> None:
    def stages(*entries: object) -> Readout:
        return training_readout(TrainConfig.model_validate({"stages": list(entries)}))

    assert stages("muco") == Readout()
    for method in ("single_turn", "muco_stage2", "unime_hard_negative", "cocoa_contrastive"):
        assert stages(method) == Readout()
    coma = {"method": "coma_contrastive", "compression_tokens": 8}
    assert stages("coma_compress", coma) == Readout("compression_mean", 8)
    assert stages({"method": "coma_compress", "compression_tokens": 5}) == Readout(
        "compression_mean", 5
    )
    # A CoMa stage followed by another method: the last one decides.
    assert stages("coma_compress", "cocoa_contrastive") == Readout()


def test_export_writes_emb_by_default_and_refuses_a_readout_without_its_tokens(
    tiny_dir: Path, tmp_path: Path
) -> None:
    embedder = Embedder.from_pretrained(tiny_dir, **PIXELS)
    out = export_model(embedder, tmp_path / "emb")
    assert Readout.from_json(json.loads((out / EMBEDDING_FILE).read_text())) == Readout()
    assert json.loads((out / MUCO_FILE).read_text())["template"]["name"] == "single_turn"
    with pytest.raises(ValueError, match="lacks <\\|comp_0\\|>"):
        export_model(embedder, tmp_path / "coma", readout=Readout("compression_mean", 2))
    assert not (tmp_path / "coma").exists()


def test_a_record_this_code_cannot_embed_with_is_an_error(tmp_path: Path) -> None:
    stale = {"readout": "compression_mean", "compression_tokens": 4, "template_version": "coma-v0"}
    with pytest.raises(ValueError, match="trained with template 'coma-v0'"):
        Readout.from_json(stale)
    with pytest.raises(ValueError, match="not a readout record"):
        Readout.from_json({"readout": "last_token", "template_version": "muco-v1"})
    (tmp_path / EMBEDDING_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        Readout.of_checkpoint(tmp_path)
    assert Readout.of_checkpoint("Qwen/Qwen2-VL-2B-Instruct") == Readout()


def test_the_embedding_cache_fingerprint_covers_the_readout(coma_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(coma_dir, copy)
    spec = ModelSpec(str(copy))
    assert spec.settings()["readout"] == "compression_mean"
    assert spec.settings()["template"] == templates.COMA_TEMPLATE_VERSION
    before = spec.fingerprint()
    (copy / EMBEDDING_FILE).write_text(json.dumps(Readout().to_json()))
    assert spec.settings()["template"] == templates.TEMPLATE_VERSION
    assert spec.fingerprint() != before
