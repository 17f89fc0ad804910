"""A 64-bit DCT perceptual hash and an index that finds near-duplicate hashes quickly.

The hash survives what an image goes through when it is copied around: re-encoding (JPEG
quality changes, PNG conversion), resizing and small brightness shifts move it by a few bits,
while unrelated pictures differ in about half of them. Two images are "the same picture" when
the Hamming distance between their hashes is at most a small threshold
(``validate.leakage.phash_max_distance``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from PIL import Image
from scipy.fft import dctn

__all__ = ["HASH_BITS", "NearDuplicateIndex", "hamming", "perceptual_hash"]

HASH_BITS = 64
_SIDE = 32  # the image is reduced to _SIDE x _SIDE before the DCT
_BLOCK = 8  # the low-frequency _BLOCK x _BLOCK corner of the DCT gives the 64 bits
# Coefficients are rounded to 1/_QUANTUM before the median threshold. Coefficients that are
# equal in exact arithmetic (zeros of a flat or symmetric image) then compare equal on every
# platform, instead of being ordered by the last bits of the FFT library's rounding.
_QUANTUM = 1024

Label = TypeVar("Label", bound=Hashable)


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash (pHash) of ``image``.

    Steps: convert to 8-bit grayscale (PIL's integer ITU-R 601-2 luma); resize to 32 x 32 with
    the BOX filter (each output pixel is the area average of the source pixels it covers, so
    downscaling cannot alias and upscaling stays well defined); 2-D orthonormal DCT-II; keep the
    top-left 8 x 8 block of the lowest frequencies, DC term included; set a bit for every
    coefficient above the median of those 64. The DC bit is nearly always set (it is the mean
    brightness, far above the median), which costs one bit but keeps the block a plain 8 x 8
    square. Bits are packed row-major, coefficient (0, 0) in the most significant bit.

    Both PIL steps are integer arithmetic and the coefficients are rounded before the
    comparison, so the hash is the same on every run and platform.
    """
    gray = image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64)
    block = dctn(pixels, type=2, norm="ortho")[:_BLOCK, :_BLOCK]
    quantised = np.rint(block * _QUANTUM).astype(np.int64).ravel()
    ordered = np.sort(quantised)
    middle = HASH_BITS // 2
    # value > median, with median = (ordered[31] + ordered[32]) / 2, kept in integers.
    twice_median = int(ordered[middle - 1]) + int(ordered[middle])
    bits = 2 * quantised > twice_median
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    """The number of bits in which hashes ``a`` and ``b`` differ."""
    return (a ^ b).bit_count()


def _check_hash(value: int) -> int:
    if not 0 <= value < 1 << HASH_BITS:
        raise ValueError(f"not a {HASH_BITS}-bit hash: {value!r}")
    return value


class NearDuplicateIndex(Generic[Label]):
    """All stored hashes within a Hamming distance of a query hash, without a full scan.

    Multi-index hashing by the pigeonhole principle: the 64 bits are cut into
    ``max_distance + 1`` disjoint chunks. Two hashes that differ in at most ``max_distance`` bits
    cannot differ in every chunk, so they agree exactly on at least one. Each chunk position has
    a dict from chunk value to the entries holding it; a query collects the entries that share
    any chunk with it and keeps those whose full distance is within the limit. The answer is
    exactly that of a brute-force scan.

    Complexity, for n entries and m = max_distance + 1 chunks of about 64 / m bits: building is
    O(n m) time and memory; a query is O(m + c) where c is the number of candidates. For hashes
    spread evenly c is about n m / 2^(64 / m): at max_distance 3 (16-bit chunks) c ~ n / 16000,
    at 6 (9-10 bit chunks) c ~ n / 80; the index degrades towards a scan as chunks shrink
    (max_distance 16 leaves 3-4 bit chunks and c ~ 0.75 n). Hashes of real image collections
    cluster, so c is larger there, never more than n.
    """

    def __init__(self, entries: Iterable[tuple[int, Label]], max_distance: int) -> None:
        """Index ``(hash, label)`` pairs for queries within ``max_distance`` bits."""
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")
        self.max_distance = max_distance
        chunks = max_distance + 1
        width, wider = divmod(HASH_BITS, chunks)
        # (shift, mask) of each chunk, most significant first; the first `wider` get one more bit.
        self._chunks: list[tuple[int, int]] = []
        shift = HASH_BITS
        for index in range(chunks):
            bits = width + (index < wider)
            shift -= bits
            self._chunks.append((shift, (1 << bits) - 1))
        self._hashes: list[int] = []
        self._labels: list[Label] = []
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._chunks]
        for value, label in entries:
            self._add(_check_hash(value), label)

    def __len__(self) -> int:
        return len(self._hashes)

    def _add(self, value: int, label: Label) -> None:
        position = len(self._hashes)
        self._hashes.append(value)
        self._labels.append(label)
        for table, (shift, mask) in zip(self._tables, self._chunks, strict=True):
            table.setdefault((value >> shift) & mask, []).append(position)

    def query(self, phash: int, max_distance: int | None = None) -> list[tuple[Label, int]]:
        """``(label, distance)`` of every entry within ``max_distance`` bits of ``phash``.

        Sorted by distance, then in the order the entries were given. ``max_distance`` defaults
        to the index's and cannot exceed it: the chunking only guarantees completeness up to it.
        """
        limit = self.max_distance if max_distance is None else max_distance
        if not 0 <= limit <= self.max_distance:
            raise ValueError(
                f"max_distance must be in 0..{self.max_distance} for this index, got {limit}"
            )
        _check_hash(phash)
        candidates: set[int] = set()
        for table, (shift, mask) in zip(self._tables, self._chunks, strict=True):
            candidates.update(table.get((phash >> shift) & mask, ()))
        found = []
        for position in candidates:
            distance = hamming(phash, self._hashes[position])
            if distance <= limit:
                found.append((distance, position))
        found.sort()
        return [(self._labels[position], distance) for distance, position in found]


# Side of the colour thumbnail that verifies perceptual-hash candidates, and the floor under a
# channel's standard deviation (a flat channel must not turn JPEG noise into huge z-scores).
COLOUR_SIDE = 16
_STD_FLOOR = 8.0


@dataclass(frozen=True)
class VisualSignature:
    """How an image looks, for near-duplicate search: a 64-bit pHash plus a colour thumbnail.

    The pHash sees only coarse grayscale layout: two different flat pictures with one small
    object in the same place (a red ring on dark grey, a yellow star on light grey) can share
    it exactly. ``colour`` keeps what the hash throws away: a 16x16 RGB thumbnail, z-normalised
    per channel so brightness and contrast changes cancel out. The hash proposes candidates (it
    is indexable); :func:`colour_deviation` confirms them.
    """

    phash: int
    colour: np.ndarray  # (COLOUR_SIDE, COLOUR_SIDE, 3) float32


def visual_signature(image: Image.Image) -> VisualSignature:
    """pHash and normalised colour thumbnail of ``image``."""
    thumbnail = image.convert("RGB").resize((COLOUR_SIDE, COLOUR_SIDE), Image.Resampling.BOX)
    pixels = np.asarray(thumbnail, dtype=np.float64)
    mean = pixels.mean(axis=(0, 1))
    std = np.maximum(pixels.std(axis=(0, 1)), _STD_FLOOR)
    return VisualSignature(perceptual_hash(image), ((pixels - mean) / std).astype(np.float32))


def colour_deviation(a: VisualSignature, b: VisualSignature) -> float:
    """Largest difference between the two normalised thumbnails, in standard deviations.

    Measured (tests/validation/test_phash.py): re-encoded, resized or brightened copies of a
    photo stay under 1; mildly re-encoded rendered scenes under 2.5; distinct scenes whose
    pHashes collide are all above 3.6.
    """
    return float(np.abs(a.colour - b.colour).max())
