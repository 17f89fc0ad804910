"""Deduplicated, cached, resumable encoding of evaluation inputs.

Benchmarks repeat inputs heavily: MMEB's classification candidates are the same label texts for
every query, M-BEIR's pools are shared by all queries, scenes-bench reuses images across
datasets. :func:`encode_items` embeds each distinct input once per model across every dataset of
a run, and keeps the result in an on-disk :class:`EmbeddingCache` keyed by (model fingerprint,
input hash), so a second run, or a run resumed after an interruption, encodes only what is
missing. The cache holds numpy ``.npz`` parts (never pickle, DESIGN.md rule 8), each written
atomically after a chunk of inputs, so an interruption loses at most the chunk in progress.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from muco.evaluation.model_spec import ModelSpec, file_sha256
from muco.evaluation.tasks import EvalItem
from muco.io import atomic_write_bytes
from muco.model.embedder import Embedder, EmbedInput

LOG = logging.getLogger(__name__)

# Inputs encoded between two cache writes: the most an interruption can lose.
DEFAULT_CHUNK_SIZE = 256


@dataclass(frozen=True)
class EncodeStats:
    """What one :func:`encode_items` call did.

    ``inputs`` counts requested items with repeats, ``unique`` distinct ones, ``cache_hits``
    those already cached, ``encoded`` those the model embedded (one model input each) in
    ``batches`` forward passes.
    """

    inputs: int
    unique: int
    cache_hits: int
    encoded: int
    batches: int
    seconds: float

    @property
    def inputs_per_second(self) -> float:
        """Requested inputs served per second of wall time."""
        return self.inputs / self.seconds if self.seconds > 0 else float("inf")


class ItemKeys:
    """Content keys of items: sha256 of text, image bytes and crop box.

    The image's bytes are hashed (once per path), not its path, so a moved file still hits
    the cache and a replaced one misses.
    """

    def __init__(self) -> None:
        self._image_digests: dict[str, str] = {}

    def key(self, item: EvalItem) -> str:
        """The hex sha256 that names ``item`` in the cache."""
        image = None if item.image is None else self._image_digest(item.image)
        payload = json.dumps([item.text, image, item.box], separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _image_digest(self, path: str) -> str:
        if path not in self._image_digests:
            if not Path(path).is_file():
                raise FileNotFoundError(f"image not found: {path}")
            self._image_digests[path] = file_sha256(Path(path))
        return self._image_digests[path]


class EmbeddingCache:
    """Embeddings of one model on disk: ``directory`` holds ``part-*.npz`` files.

    Each part has ``keys`` (N,) of 64-byte hex digests and ``embeddings`` (N, D) float32. A
    part that cannot be read (a damaged disk, a foreign file) is skipped with a warning: its
    inputs are encoded again, nothing else is lost.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_model(cls, root: Path, fingerprint: str) -> EmbeddingCache:
        """The cache of the model with ``fingerprint`` under the cache ``root``."""
        return cls(Path(root) / fingerprint[:32])

    def load(self) -> dict[str, np.ndarray]:
        """Every cached embedding by key; later parts win (they hold the same values)."""
        found: dict[str, np.ndarray] = {}
        for part in sorted(self.directory.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as data:
                    keys, embeddings = data["keys"], data["embeddings"]
            except (OSError, ValueError, KeyError) as error:
                LOG.warning("embedding cache: skipping unreadable part %s (%s)", part, error)
                continue
            for key, row in zip(keys, embeddings, strict=True):
                found[key.decode("ascii")] = row
        return found

    def add(self, keys: Sequence[str], embeddings: np.ndarray) -> Path:
        """Write one part atomically; returns its path."""
        if len(keys) != embeddings.shape[0]:
            raise ValueError(f"{len(keys)} keys for {embeddings.shape[0]} embeddings")
        buffer = io.BytesIO()
        np.savez(
            buffer,
            keys=np.array([key.encode("ascii") for key in keys], dtype="S64"),
            embeddings=embeddings.astype(np.float32, copy=False),
        )
        # Time then randomness: parts sort by age, and parallel workers never collide.
        path = self.directory / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return path


class Embeddings:
    """Encoded inputs: ``matrix`` (U, D) float32 with one row per distinct key."""

    def __init__(self, keys: ItemKeys, rows: dict[str, int], matrix: np.ndarray) -> None:
        self._keys = keys
        self._rows = rows
        self.matrix = matrix

    def rows(self, items: Sequence[EvalItem]) -> np.ndarray:
        """Embeddings (len(items), D) of ``items``, in order."""
        return self.matrix[[self._rows[self._keys.key(item)] for item in items]]


def encode_items(
    items: Sequence[EvalItem],
    spec: ModelSpec,
    *,
    cache: EmbeddingCache | None = None,
    embedder: Embedder | None = None,
    batch_size: int = 16,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 1,
    keys: ItemKeys | None = None,
) -> tuple[Embeddings, EncodeStats]:
    """Embed every distinct item of ``items`` once, reusing and extending ``cache``.

    The model is loaded from ``spec`` only when something is missing (or ``embedder`` is
    given, already loaded). Missing items are sorted by size (images first, most pixels and
    longest texts first) so batches pad little, and encoded in chunks of ``chunk_size``, each
    written to the cache before the next starts. With ``workers`` > 1 the missing items are
    split over that many processes (one GPU each when there are enough GPUs, else CPU threads
    shared out), which write to the cache directly; this needs a ``cache``. ``keys`` shares
    image digests with a caller that hashes the same items.
    """
    started = time.perf_counter()
    keys = keys if keys is not None else ItemKeys()
    distinct: dict[str, EvalItem] = {}
    for item in items:
        distinct.setdefault(keys.key(item), item)
    cached = cache.load() if cache is not None else {}
    missing = sorted(
        (key for key in distinct if key not in cached), key=lambda k: _size_key(distinct[k])
    )
    encoded: dict[str, np.ndarray] = {}
    batches = 0
    if missing and workers > 1:
        if cache is None:
            raise ValueError("encoding with several workers needs an embedding cache")
        batches = _encode_in_workers(
            [distinct[key] for key in missing], spec, cache, batch_size, chunk_size, workers
        )
        cached = cache.load()
    elif missing:
        model = embedder if embedder is not None else spec.load()
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start : start + chunk_size]
            vectors = model.encode([to_embed_input(distinct[k]) for k in chunk], batch_size)
            batches += -(-len(chunk) // batch_size)
            if cache is not None:
                cache.add(chunk, vectors)
            encoded.update(zip(chunk, vectors, strict=True))
    rows = {key: index for index, key in enumerate(distinct)}
    matrix = np.stack([encoded[key] if key in encoded else cached[key] for key in distinct])
    stats = EncodeStats(
        inputs=len(items),
        unique=len(distinct),
        cache_hits=len(distinct) - len(missing),
        encoded=len(missing),
        batches=batches,
        seconds=time.perf_counter() - started,
    )
    return Embeddings(keys, rows, matrix.astype(np.float32, copy=False)), stats


def to_embed_input(item: EvalItem) -> EmbedInput:
    """The :class:`EmbedInput` of ``item``; a crop box is applied here, in memory."""
    if item.image is None:
        return EmbedInput(text=item.text)
    if item.box is None:
        return EmbedInput(text=item.text or None, image=item.image)
    with Image.open(item.image) as opened:
        crop = opened.convert("RGB").crop(item.box)
    return EmbedInput(text=item.text or None, image=crop)


def _size_key(item: EvalItem) -> tuple[int, int, int]:
    if item.image is None:
        return (1, 0, -len(item.text))
    if item.box is not None:
        left, top, right, bottom = item.box
        return (0, -(right - left) * (bottom - top), -len(item.text))
    with Image.open(item.image) as opened:  # the header only
        return (0, -opened.width * opened.height, -len(item.text))


def _encode_in_workers(
    items: Sequence[EvalItem],
    spec: ModelSpec,
    cache: EmbeddingCache,
    batch_size: int,
    chunk_size: int,
    workers: int,
) -> int:
    """Encode ``items`` in ``workers`` processes that write to ``cache``; returns batches run."""
    devices = _worker_devices(spec, workers)
    # Every worker takes every n-th item, so each gets a similar mix of large and small inputs.
    shares = [list(items[index::workers]) for index in range(workers)]
    threads = max(1, torch.get_num_threads() // workers)
    # spawn, not fork: CUDA cannot be re-initialised in a forked child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(
                _worker,
                replace(spec, device=device),
                share,
                str(cache.directory),
                batch_size,
                chunk_size,
                threads,
            )
            for device, share in zip(devices, shares, strict=True)
            if share
        ]
        return sum(future.result() for future in futures)


def _worker_devices(spec: ModelSpec, workers: int) -> list[str]:
    device = spec.resolved_device()
    if device.startswith("cuda") and torch.cuda.device_count() >= workers:
        return [f"cuda:{index}" for index in range(workers)]
    return [device] * workers


def _worker(
    spec: ModelSpec,
    items: Sequence[EvalItem],
    cache_directory: str,
    batch_size: int,
    chunk_size: int,
    threads: int,
) -> int:
    """One encoding process: load the model, encode ``items`` chunk by chunk into the cache."""
    torch.set_num_threads(threads)
    _, stats = encode_items(
        items,
        spec,
        cache=EmbeddingCache(Path(cache_directory)),
        batch_size=batch_size,
        chunk_size=chunk_size,
    )
    return stats.batches
