"""Deduplicated, cached, resumable encoding: parity with Embedder.encode, and what it skips."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from muco.evaluation.encoding import EmbeddingCache, encode_items
from muco.evaluation.model_spec import ModelSpec
from muco.evaluation.tasks import EvalItem
from muco.model.embedder import Embedder, EmbedInput


@pytest.fixture(scope="module")
def spec(tiny_spec: ModelSpec) -> ModelSpec:
    return tiny_spec


@pytest.fixture(scope="module")
def embedder(spec: ModelSpec) -> Embedder:
    return spec.load()


@pytest.fixture(scope="module")
def items(scene_pool: Path) -> list[EvalItem]:
    images = sorted(str(path) for path in (scene_pool / "scenes" / "test").glob("*.png"))[:4]
    distinct = [
        EvalItem(text="a red circle"),
        EvalItem(text="three"),
        EvalItem(text="<|image_1|>\nHow many objects?", image=images[0]),
        EvalItem(text="<|image_1|>\nHow many objects?", image=images[1]),
        EvalItem(image=images[2]),
        EvalItem(text="crop", image=images[3], box=(4, 4, 30, 30)),
    ]
    # Repeats, as benchmarks have them: label texts and images shared by many queries.
    return [*distinct, distinct[0], distinct[2], distinct[0], distinct[5]]


class ForwardCounter:
    """Counts the model's forward passes and the inputs they embed (a spy, not a fake)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> None:
        self.calls = 0
        self.inputs = 0
        original = Embedder.forward_embeddings

        def counted(embedder: Embedder, batch: dict) -> object:
            if fail_after is not None and self.calls >= fail_after:
                raise KeyboardInterrupt("interrupted")
            self.calls += 1
            self.inputs += int(batch["input_ids"].shape[0])
            return original(embedder, batch)

        monkeypatch.setattr(Embedder, "forward_embeddings", counted)


def _reference(embedder: Embedder, items: list[EvalItem]) -> np.ndarray:
    inputs = []
    for item in items:
        image = item.image
        if item.box is not None:
            with Image.open(item.image) as opened:
                image = opened.convert("RGB").crop(item.box)
        inputs.append(EmbedInput(text=item.text or None, image=image))
    return embedder.encode(inputs, batch_size=4)


def test_each_distinct_input_is_encoded_once_and_matches_encode(
    spec: ModelSpec, embedder: Embedder, items: list[EvalItem], monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = ForwardCounter(monkeypatch)
    embeddings, stats = encode_items(items, spec, embedder=embedder, batch_size=4)
    assert (stats.inputs, stats.unique, stats.cache_hits, stats.encoded) == (10, 6, 0, 6)
    assert counter.inputs == 6
    assert counter.calls == stats.batches == 2
    np.testing.assert_allclose(embeddings.rows(items), _reference(embedder, items), atol=1e-5)


def test_a_warm_cache_makes_no_model_call(
    spec: ModelSpec,
    embedder: Embedder,
    items: list[EvalItem],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = EmbeddingCache.for_model(tmp_path, spec.fingerprint())
    first, _ = encode_items(items, spec, cache=cache, embedder=embedder, chunk_size=2)
    assert len(list(cache.directory.glob("part-*.npz"))) == 3
    counter = ForwardCounter(monkeypatch)
    # No embedder given: a warm cache must not even load the model.
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail("model loaded"))
    second, stats = encode_items(items, spec, cache=cache)
    assert (counter.calls, stats.encoded, stats.cache_hits) == (0, 0, 6)
    np.testing.assert_array_equal(second.rows(items), first.rows(items))


def test_an_interrupted_encoding_resumes_where_it_stopped(
    spec: ModelSpec,
    embedder: Embedder,
    items: list[EvalItem],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = EmbeddingCache.for_model(tmp_path, spec.fingerprint())
    with monkeypatch.context() as patch:
        ForwardCounter(patch, fail_after=2)
        with pytest.raises(KeyboardInterrupt):
            encode_items(items, spec, cache=cache, embedder=embedder, chunk_size=2, batch_size=2)
    assert len(cache.load()) == 4  # two chunks of two made it to disk
    counter = ForwardCounter(monkeypatch)
    resumed, stats = encode_items(items, spec, cache=cache, embedder=embedder, batch_size=2)
    assert (stats.cache_hits, stats.encoded, counter.inputs) == (4, 2, 2)
    np.testing.assert_allclose(resumed.rows(items), _reference(embedder, items), atol=1e-5)


def test_an_unreadable_cache_part_is_skipped_and_re_encoded(
    spec: ModelSpec,
    embedder: Embedder,
    items: list[EvalItem],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = EmbeddingCache.for_model(tmp_path, spec.fingerprint())
    encode_items(items, spec, cache=cache, embedder=embedder, chunk_size=3)
    damaged = sorted(cache.directory.glob("part-*.npz"))[0]
    damaged.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING):
        _, stats = encode_items(items, spec, cache=cache, embedder=embedder)
    assert str(damaged) in caplog.text
    assert (stats.cache_hits, stats.encoded) == (3, 3)


def test_image_keys_follow_content_not_path(
    spec: ModelSpec, embedder: Embedder, items: list[EvalItem], tmp_path: Path
) -> None:
    cache = EmbeddingCache.for_model(tmp_path / "cache", spec.fingerprint())
    encode_items(items, spec, cache=cache, embedder=embedder)
    moved = tmp_path / "moved.png"
    shutil.copy(items[4].image, moved)
    _, stats = encode_items([EvalItem(image=str(moved))], spec, cache=cache, embedder=embedder)
    assert stats.cache_hits == 1
    missing = EvalItem(image=str(tmp_path / "gone.png"))
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        encode_items([missing], spec, cache=cache, embedder=embedder)


def test_fingerprint_follows_weights_and_settings(spec: ModelSpec, tmp_path: Path) -> None:
    assert spec.fingerprint() == replace(spec, device="cuda").fingerprint()
    assert spec.fingerprint() != replace(spec, min_pixels=28 * 28).fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(spec.model, copy)
    assert replace(spec, model=str(copy)).fingerprint() == spec.fingerprint()
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert replace(spec, model=str(copy)).fingerprint() != spec.fingerprint()


@pytest.mark.slow
def test_two_worker_processes_give_the_single_process_embeddings(
    spec: ModelSpec, embedder: Embedder, items: list[EvalItem], tmp_path: Path
) -> None:
    cache = EmbeddingCache.for_model(tmp_path, spec.fingerprint())
    parallel, stats = encode_items(items, spec, cache=cache, workers=2, chunk_size=2)
    assert (stats.encoded, stats.cache_hits) == (6, 0)
    assert len(cache.load()) == 6
    np.testing.assert_allclose(parallel.rows(items), _reference(embedder, items), atol=1e-5)
