"""Leakage between training records and evaluation sets: shared images and shared texts.

An evaluation set (``validate.leakage.eval_sets``) is loaded once into an :class:`EvalSet`: the
content hashes and perceptual hashes of its images and its normalised texts. A
:class:`LeakageDetector` then answers, per training record, whether it shows an evaluation image
(the same bytes, or a re-encoded or resized copy of the same picture) or repeats an evaluation
text; such records are removed from training.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from muco.config import DecodeLimits, EvalSetSpec
from muco.images.decode import ImageRejected, decode_file
from muco.images.formats import IMAGE_EXTENSIONS
from muco.images.pool import read_manifest
from muco.records import read_records
from muco.validation.phash import (
    NearDuplicateIndex,
    VisualSignature,
    colour_deviation,
    visual_signature,
)

__all__ = [
    "EvalSet",
    "Leak",
    "LeakageDetector",
    "load_eval_set",
    "normalise_text",
]

LeakKind = Literal["exact_image", "near_image", "text"]

_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
# A word is a run of letters, digits or underscores; an apostrophe joins two runs ("don't").
_WORD = re.compile(r"\w+(?:'\w+)*")
_TYPOGRAPHIC_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_RECORD_TEXT_COLUMNS = ("pos_text", "pos_sentence", "neg_text")
_RECORD_IMAGE_COLUMNS = ("qry_image_path", "pos_image_path")
_DETAIL_CHARS = 80


def normalise_text(text: str) -> str:
    """``text`` reduced to what makes two texts "the same" for leakage.

    Image placeholders (``<|image_1|>``) are removed, case is folded, typographic apostrophes
    become ``'``, and the text is rebuilt from its words joined by single spaces: every other
    character (punctuation, symbols, any whitespace) only separates words. Apostrophes inside a
    word survive ("don't" stays distinct from "don t"); quotes around words do not.
    """
    folded = _PLACEHOLDER.sub(" ", text).casefold().translate(_TYPOGRAPHIC_APOSTROPHES)
    return " ".join(_WORD.findall(folded))


@dataclass(frozen=True)
class EvalSet:
    """What training must not share with one evaluation set.

    Every mapping goes from a key to where in the evaluation set it was first seen, e.g.
    ``"scenes-bench:test-000012"``. ``skipped`` counts images that could not be decoded (they are
    still matched by content hash when their hash is known, but have no visual signature).
    """

    name: str
    image_sha256: dict[str, str]
    signatures: list[tuple[VisualSignature, str]]
    texts: dict[str, str]
    skipped: int = 0


@dataclass(frozen=True)
class Leak:
    """One training item found in an evaluation set.

    ``kind`` is ``exact_image`` (same bytes), ``near_image`` (perceptual hash within the
    threshold) or ``text`` (same normalised text); ``where`` names the evaluation item and
    ``detail`` says what matched.
    """

    kind: LeakKind
    eval_set: str
    where: str
    detail: str


class _Collector:
    """Accumulates an :class:`EvalSet`; the first occurrence of a hash or text names it."""

    def __init__(self, name: str, limits: DecodeLimits) -> None:
        self.name = name
        self.limits = limits
        self.image_sha256: dict[str, str] = {}
        self.signatures: list[tuple[VisualSignature, str]] = []
        self.texts: dict[str, str] = {}
        self.skipped = 0

    def where(self, item: str) -> str:
        return f"{self.name}:{item}"

    def add_image_hash(self, sha256: str, item: str) -> None:
        self.image_sha256.setdefault(sha256, self.where(item))

    def add_image_file(self, path: Path, item: str, sha256: str | None = None) -> None:
        """Decode ``path`` for its visual signature; a known ``sha256`` saves hashing the bytes."""
        try:
            decoded = decode_file(path, self.limits)
        except ImageRejected:
            self.skipped += 1
            if sha256 is not None:
                self.add_image_hash(sha256, item)
            return
        self.add_image_hash(sha256 or decoded.sha256, item)
        self.signatures.append((visual_signature(decoded.image), self.where(item)))

    def add_text(self, text: str, item: str) -> None:
        normalised = normalise_text(text)
        if normalised:
            self.texts.setdefault(normalised, self.where(item))

    def result(self) -> EvalSet:
        return EvalSet(
            name=self.name,
            image_sha256=self.image_sha256,
            signatures=self.signatures,
            texts=self.texts,
            skipped=self.skipped,
        )


def load_eval_set(spec: EvalSetSpec, limits: DecodeLimits) -> EvalSet:
    """Load the images and texts of the evaluation set ``spec`` describes.

    - ``pool``: the manifest rows of an image pool (only ``spec.splits`` when given); content
      hashes come from the manifest, images are decoded for their perceptual hash;
    - ``folder``: every image file below the folder (by extension) and every non-empty line of
      its ``*.txt`` files;
    - ``records``: M3T parquet; the texts of every turn plus ``qry_sentence``, the recorded
      ``image_sha256`` when present, and the query and target images under ``spec.image_root``
      when that is given.

    Images that fail to decode are counted in ``skipped``, not fatal: an evaluation set is
    checked as far as it can be read.

    Raises:
        FileNotFoundError: ``spec.path`` (or a pool's manifest) does not exist.
        ValueError: a pool has no rows in the requested splits (a misspelt split would
            otherwise silently check nothing).
    """
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation set {path} does not exist")
    collector = _Collector(spec.name or path.name, limits)
    if spec.kind == "pool":
        _load_pool(path, spec.splits, collector)
    elif spec.kind == "folder":
        _load_folder(path, collector)
    else:
        _load_records(path, spec.image_root, collector)
    return collector.result()


def _load_pool(pool: Path, splits: Sequence[str], collector: _Collector) -> None:
    rows = read_manifest(pool).select(["image_id", "path", "sha256", "split"]).to_pylist()
    if splits:
        present = sorted({row["split"] for row in rows})
        rows = [row for row in rows if row["split"] in splits]
        if not rows:
            raise ValueError(
                f"image pool {pool} has no images in split(s) {list(splits)}; it has {present}"
            )
    for row in rows:
        collector.add_image_file(pool / row["path"], row["image_id"], row["sha256"])


def _load_folder(folder: Path, collector: _Collector) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            collector.add_image_file(path, relative)
        elif suffix == ".txt":
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for number, line in enumerate(lines, start=1):
                collector.add_text(line, f"{relative}:{number}")


def _load_records(path: Path, image_root: Path | None, collector: _Collector) -> None:
    table = read_records(path)
    for index, row in enumerate(table.to_pylist()):
        item = f"row {index}"
        for text in _record_texts(row):
            collector.add_text(text, item)
        if row["image_sha256"]:
            collector.add_image_hash(row["image_sha256"], item)
    if image_root is None:
        return
    # Many records may show the same image: decode each file once.
    relative_paths = {
        relative
        for column in _RECORD_IMAGE_COLUMNS
        for relative in table[column].to_pylist()
        if relative
    }
    for relative in sorted(relative_paths):
        collector.add_image_file(Path(image_root) / relative, relative)


def _record_texts(row: dict) -> Iterator[str]:
    for paraphrases in row["qry"] or ():
        yield from paraphrases or ()
    for column in _RECORD_TEXT_COLUMNS:
        yield from row[column] or ()
    if row["qry_sentence"]:
        yield row["qry_sentence"]


def _shorten(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


class LeakageDetector:
    """Finds training images and texts that appear in any of the given evaluation sets.

    The indexes are built once; every check then costs a dict lookup (content hash, text) or a
    :class:`NearDuplicateIndex` query (perceptual hash).
    """

    def __init__(
        self,
        eval_sets: Sequence[EvalSet],
        max_distance: int,
        min_text_chars: int,
        max_colour_deviation: float,
    ) -> None:
        """Index ``eval_sets``. A near image is within ``max_distance`` pHash bits *and*
        ``max_colour_deviation`` on the colour thumbnail; texts must have at least
        ``min_text_chars`` characters after normalisation to count."""
        self.max_distance = max_distance
        self.min_text_chars = min_text_chars
        self.max_colour_deviation = max_colour_deviation
        self._exact: dict[str, list[tuple[str, str]]] = {}
        self._texts: dict[str, list[tuple[str, str]]] = {}
        for eval_set in eval_sets:
            for sha256, where in eval_set.image_sha256.items():
                self._exact.setdefault(sha256, []).append((eval_set.name, where))
            for text, where in eval_set.texts.items():
                if len(text) >= min_text_chars:
                    self._texts.setdefault(text, []).append((eval_set.name, where))
        self._near: NearDuplicateIndex[tuple[str, str, VisualSignature]] = NearDuplicateIndex(
            (
                (signature.phash, (eval_set.name, where, signature))
                for eval_set in eval_sets
                for signature, where in eval_set.signatures
            ),
            max_distance,
        )

    def check_image(self, sha256: str, signature: VisualSignature) -> list[Leak]:
        """Leaks of one training image: exact copies by content hash, else near copies.

        An exact match makes the near check moot. A near copy is a pHash candidate whose colour
        thumbnail also matches; each evaluation set reports its closest such item once.
        """
        exact = self._exact.get(sha256)
        if exact:
            return [
                Leak("exact_image", name, where, f"same bytes (sha256 {sha256[:12]})")
                for name, where in exact
            ]
        closest: dict[str, Leak] = {}
        for (name, where, candidate), distance in self._near.query(signature.phash):
            if name in closest:  # query results come nearest first
                continue
            deviation = colour_deviation(signature, candidate)
            if deviation <= self.max_colour_deviation:
                detail = f"phash distance {distance}, colour deviation {deviation:.2f} to {where}"
                closest[name] = Leak("near_image", name, where, detail)
        return list(closest.values())

    def check_texts(self, texts: Iterable[str]) -> list[Leak]:
        """Leaks among one training record's texts: each distinct normalised text of at least
        ``min_text_chars`` characters that an evaluation set also holds, once per set."""
        leaks: list[Leak] = []
        checked: set[str] = set()
        for text in texts:
            normalised = normalise_text(text)
            if len(normalised) < self.min_text_chars or normalised in checked:
                continue
            checked.add(normalised)
            for name, where in self._texts.get(normalised, ()):
                leaks.append(Leak("text", name, where, _shorten(normalised)))
        return leaks
