"""Per-record checks that become the columns the expectation suite validates.

Great Expectations judges columns; what a record *is* worth checking (its turn structure, its
texts, its image on disk, its duplicates, its leakage into evaluation data) is computed here
as plain values, one :class:`RecordChecks` per record, by pure functions. Each image is decoded
once, under the pool's limits, and its perceptual hash computed from that one decode.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from muco.config import DecodeLimits
from muco.images.decode import ImageRejected, decode_file
from muco.synthesis.content import IMAGE_PLACEHOLDER, M3T_TURN_TYPES
from muco.validation.leakage import LeakageDetector, normalise_text
from muco.validation.phash import VisualSignature, visual_signature


@dataclass(frozen=True)
class RecordChecks:
    """The derived, per-record values the suite validates (one DataFrame row)."""

    n_turns: int
    turn_shape_ok: bool  # every per-turn list has n_turns entries, every turn a query
    turn_types_ok: bool  # turn types present and in M3T order for k = 7
    empty_texts: int
    shortest_text: int  # characters, over the non-empty texts (0 when there are none)
    longest_text: int
    nonprintable_texts: int
    query_equals_target: int  # turns in which a query paraphrase equals the target text
    negative_equals_positive: int  # turns whose hard negative equals the target text
    image_path_problem: str | None
    image_problem: str | None
    image_hash_mismatch: str | None
    duplicate_of: str | None
    duplicate_image_of: str | None
    leak: str | None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def texts_of(record: dict[str, Any]) -> list[str | None]:
    """Every text of a record: query paraphrases, targets, sentences, negatives, description."""
    texts: list[str | None] = [q for turn in record["qry"] or [] for q in (turn or [])]
    for name in ("pos_text", "pos_sentence", "neg_text"):
        texts.extend(record[name] or [])
    texts.append(record["qry_sentence"])
    return texts


def _is_printable(text: str) -> bool:
    # Line breaks are legitimate in queries; other control and format characters are not.
    return all(c == "\n" or unicodedata.category(c)[0] != "C" for c in text)


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and normalise_text(a) == normalise_text(b)


def text_checks(record: dict[str, Any], turns: int) -> dict[str, Any]:
    """Turn structure and text values of one record."""
    per_turn = [record["qry"] or [], record["pos_text"] or [], record["pos_sentence"] or []]
    per_turn.append(record["neg_text"] or [])
    n_turns = len(record["pos_text"] or [])
    shape_ok = all(len(values) == n_turns for values in per_turn) and all(
        turn for turn in per_turn[0]
    )
    turn_types = record["turn_types"]
    types_ok = (
        turn_types is not None
        and len(turn_types) == n_turns
        and (turns != len(M3T_TURN_TYPES) or list(turn_types) == list(M3T_TURN_TYPES))
    )
    texts = texts_of(record)
    present = [t.replace(IMAGE_PLACEHOLDER, "").strip() for t in texts if t is not None]
    lengths = [len(t) for t in present if t]
    query_equals = negative_equals = 0
    if shape_ok:
        for queries, target, negative in zip(
            record["qry"], record["pos_text"], record["neg_text"], strict=True
        ):
            query_equals += any(_same(q, target) for q in queries)
            negative_equals += _same(negative, target)
    return {
        "n_turns": n_turns,
        "turn_shape_ok": shape_ok,
        "turn_types_ok": types_ok,
        "empty_texts": len(texts) - len(lengths),
        "shortest_text": min(lengths, default=0),
        "longest_text": max(lengths, default=0),
        "nonprintable_texts": sum(1 for t in present if not _is_printable(t)),
        "query_equals_target": query_equals,
        "negative_equals_positive": negative_equals,
    }


def path_problem(relative: str | None, root: Path) -> str | None:
    """Why ``relative`` is not a safe image path inside ``root``, or None.

    Paths must be relative, without ``..``, and must stay inside the root after symlinks are
    resolved, so a record can never make training read files it was not given.
    """
    if not relative:
        return "missing_path: no image path"
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or Path(relative).is_absolute() or relative[1:3] == ":\\":
        return f"absolute_path: {relative}"
    if ".." in posix.parts:
        return f"parent_reference: {relative}"
    target = root / posix
    real_root = root.resolve()
    try:
        resolved = target.resolve(strict=True)
    except FileNotFoundError:
        return f"missing_file: {relative}"
    except (OSError, RuntimeError) as error:  # symlink loops
        return f"unresolvable_path: {relative}: {error}"
    if resolved != real_root and real_root not in resolved.parents:
        return f"outside_root: {relative} resolves to {resolved}"
    return None


@dataclass(frozen=True)
class ImageFacts:
    sha256: str | None
    signature: VisualSignature | None
    problem: str | None


def image_facts(path: Path, limits: DecodeLimits) -> ImageFacts:
    """Decode once under ``limits``: content hash, visual signature, or the rejection."""
    try:
        decoded = decode_file(path, limits)
    except ImageRejected as rejection:
        return ImageFacts(None, None, f"{rejection.reason}: {rejection.detail}")
    return ImageFacts(decoded.sha256, visual_signature(decoded.image), None)


def record_key(record: dict[str, Any], image_identity: str | None) -> str:
    """Content identity of a record: its texts and its image (not its id or timestamps)."""
    payload = json.dumps(
        [
            image_identity,
            record["qry"],
            record["pos_text"],
            record["pos_sentence"],
            record["neg_text"],
            record["qry_sentence"],
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def check_records(
    records: Sequence[dict[str, Any]],
    image_root: Path,
    turns: int,
    limits: DecodeLimits,
    detector: LeakageDetector | None,
) -> list[RecordChecks]:
    """One :class:`RecordChecks` per record, in order.

    Duplicates point at the first occurrence (by record id, or row number when ids are
    missing): the first copy passes, later copies are quarantined.
    """
    results: list[RecordChecks] = []
    first_by_key: dict[str, str] = {}
    first_by_image: dict[str, str] = {}
    for index, record in enumerate(records):
        label = record.get("record_id") or f"row {index}"
        problem = path_problem(record["qry_image_path"], image_root)
        if problem is None and record.get("pos_image_path"):
            problem = path_problem(record["pos_image_path"], image_root)
        facts = (
            image_facts(image_root / record["qry_image_path"], limits)
            if problem is None
            else ImageFacts(None, None, None)
        )
        mismatch = None
        if facts.sha256 and record.get("image_sha256") and record["image_sha256"] != facts.sha256:
            mismatch = f"record says {record['image_sha256'][:12]}, file is {facts.sha256[:12]}"
        image_identity = facts.sha256 or record.get("image_sha256")
        key = record_key(record, image_identity)
        duplicate_of = first_by_key.setdefault(key, label)
        duplicate_image_of = (
            first_by_image.setdefault(image_identity, label) if image_identity else label
        )
        results.append(
            RecordChecks(
                **text_checks(record, turns),
                image_path_problem=problem,
                image_problem=facts.problem,
                image_hash_mismatch=mismatch,
                duplicate_of=None if duplicate_of == label else duplicate_of,
                duplicate_image_of=None if duplicate_image_of == label else duplicate_image_of,
                leak=_leak(detector, facts, record),
            )
        )
    return results


def _leak(detector: LeakageDetector | None, facts: ImageFacts, record: dict) -> str | None:
    if detector is None:
        return None
    leaks = []
    if facts.sha256 is not None and facts.signature is not None:
        leaks.extend(detector.check_image(facts.sha256, facts.signature))
    leaks.extend(detector.check_texts(t for t in texts_of(record) if t))
    return "; ".join(f"{leak.kind} in {leak.eval_set}: {leak.detail}" for leak in leaks) or None
