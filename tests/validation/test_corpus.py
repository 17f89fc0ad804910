"""A corpus of hand-made bad records and images, validated in one run.

Every bad kind is one mutation of a fresh, known-good record (or of its image file). The whole
corpus, a few good records and two shards that are not M3T-shaped are validated once; then each
kind must be in quarantine with exactly the expected expectation names and a detail that says
what was wrong, every good record must come out unchanged, and the counts must add up.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from muco.config import DecodeLimits, EvalSetSpec, LeakageConfig, ValidateConfig
from muco.records import RECORD_SCHEMA, M3TRecord, shard_paths, write_table_shards
from muco.synthesis.content import IMAGE_PLACEHOLDER, M3T_TURN_TYPES, M3TContent
from muco.validation.run import QUARANTINE_SCHEMA, ValidationReport, validate_records
from muco.validation.suite import EXPECTATION_NAMES, SCHEMA_EXPECTATION

Row = dict[str, Any]

LIMITS = DecodeLimits(max_bytes=200_000, max_pixels=250_000, min_side=16)
MAX_TEXT_CHARS = 500
EVAL_SENTENCE = "The lighthouse keeper painted the red door of the stone cottage."
TURNS = len(M3T_TURN_TYPES)
# Parquet files beside the M3T shards whose columns are not M3T-shaped.
NO_NEGATIVES_SHARD = "legacy-no-negatives.parquet"
STRING_TARGETS_SHARD = "legacy-string-targets.parquet"
GOOD_IDS = ("good-00", "good-01", "good-02", "good-03", "good-jpeg", "good-symlink-inside")


# --------------------------------------------------------------------------- images


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _noise(seed: int, width: int = 64, height: int = 64, spread: float = 40.0) -> Image.Image:
    """A distinct image per seed: a seeded base colour with seeded noise on top."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 226, size=3)
    pixels = base + rng.normal(0, spread, size=(height, width, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _photo() -> Image.Image:
    """A 200 x 150 photo-like image (gradients, shapes, noise): a meaningful perceptual hash."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:150, 0:200] / 200
    shade = 120 + 60 * np.sin(5 * x + 3 * y)
    base = np.stack([shade + 30, shade, shade - 30], axis=-1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, 150)), int(rng.integers(0, 100))
        box = (x0, y0, x0 + int(rng.integers(20, 60)), y0 + int(rng.integers(20, 50)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 6, size=(150, 200, 3))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- records


def _content(tag: str) -> M3TContent:
    """Seven well-formed turns whose texts all mention ``tag`` (so records differ)."""
    return M3TContent(
        qry=tuple(
            tuple(
                f"{IMAGE_PLACEHOLDER}\n{wording} {turn} about picture {tag}?"
                for wording in ("What is detail", "Describe detail", "Which thing is detail")
            )
            for turn in range(TURNS)
        ),
        pos_text=tuple(f"answer {turn} for {tag}" for turn in range(TURNS)),
        pos_sentence=tuple(f"The answer to turn {turn} is {tag}." for turn in range(TURNS)),
        neg_text=tuple(f"wrong guess {turn} for {tag}" for turn in range(TURNS)),
        qry_sentence=f"A picture labelled {tag}.",
        turn_types=M3T_TURN_TYPES,
    )


@dataclass
class CorpusBuilder:
    """Writes images under the corpus folders and makes fresh good records for them."""

    base: Path
    good_rows: dict[str, Row] = field(default_factory=dict)

    @property
    def image_root(self) -> Path:
        return self.base / "images"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    def write_image(self, relative: str, data: bytes) -> str:
        """Write ``data`` at ``relative`` under the image root; return its sha256."""
        path = self.image_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return _sha256(data)

    def replace_image(self, row: Row, data: bytes) -> None:
        """Replace the record's image file by ``data``, keeping the record's hash truthful."""
        row["image_sha256"] = self.write_image(row["qry_image_path"], data)

    def good(self, record_id: str) -> Row:
        """A fresh record that passes every expectation, with its own distinct image."""
        relative = f"pool/{record_id}.png"
        sha = self.write_image(relative, _encode(_noise(zlib.crc32(record_id.encode()))))
        return M3TRecord(
            record_id=record_id,
            image_sha256=sha,
            qry_image_path=relative,
            content=_content(record_id),
            generator="scene_graph",
            generator_model="template",
            prompt_version="v1",
            sampling={"seed": 0},
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        ).to_row()


Mutation = Callable[[Row, CorpusBuilder], list[str]]


@dataclass(frozen=True)
class BadKind:
    """One way a record can be bad: the mutation, and the expectations it must fail.

    ``mutate`` changes a fresh good record in place and returns fragments that the record's
    ``failure_details`` must contain. ``shard`` names a separate, non-M3T parquet file.
    """

    record_id: str
    expected: frozenset[str]
    mutate: Mutation
    shard: str | None = None


def _kind(
    record_id: str, expected: set[str], mutate: Mutation, shard: str | None = None
) -> BadKind:
    return BadKind(record_id, frozenset(expected), mutate, shard)


# --------------------------------------------------------------------------- mutations


def _turns(count: int) -> Mutation:
    def mutate(row: Row, _: CorpusBuilder) -> list[str]:
        tag = row["record_id"]
        row["qry"] = [[f"{IMAGE_PLACEHOLDER}\nQuestion {i} on {tag}?"] for i in range(count)]
        row["pos_text"] = [f"answer {i} for {tag}" for i in range(count)]
        row["pos_sentence"] = [f"The answer {i} is {tag}." for i in range(count)]
        row["neg_text"] = [f"wrong {i} for {tag}" for i in range(count)]
        row["turn_types"] = [i % TURNS for i in range(count)]
        return [f"turn_count: {count} turns, expected {TURNS}"]

    return mutate


def _drop_last(column: str) -> Mutation:
    def mutate(row: Row, _: CorpusBuilder) -> list[str]:
        row[column] = row[column][:-1]
        return ["turn_shape: every per-turn field has one entry per turn"]

    return mutate


def _set_turn(column: str, turn: int, value: Any, detail: str) -> Mutation:
    def mutate(row: Row, _: CorpusBuilder) -> list[str]:
        row[column][turn] = value
        return [detail]

    return mutate


def _set(column: str, value: Any, detail: str) -> Mutation:
    def mutate(row: Row, _: CorpusBuilder) -> list[str]:
        row[column] = value
        return [detail]

    return mutate


def _turn_types_swapped(row: Row, _: CorpusBuilder) -> list[str]:
    types = row["turn_types"]
    types[1], types[2] = types[2], types[1]
    return ["turn_types: turn types present, in M3T order for k = 7"]


def _too_long_sentence(row: Row, _: CorpusBuilder) -> list[str]:
    text = "A very long sentence. " * 30
    row["pos_sentence"][0] = text
    return [f"text_max_length: a text of {len(text.strip())} characters, maximum {MAX_TEXT_CHARS}"]


def _control_char_in_query(row: Row, _: CorpusBuilder) -> list[str]:
    row["qry"][0][1] = f"{IMAGE_PLACEHOLDER}\nWhat colour\x07 is the ball?"
    return ["printable_text: 1 offending text(s) or turn(s)"]


def _zero_width_in_answer(row: Row, _: CorpusBuilder) -> list[str]:
    row["pos_text"][3] = "red\u200bball"
    return ["printable_text: 1 offending text(s) or turn(s)"]


def _query_equals_target(row: Row, _: CorpusBuilder) -> list[str]:
    row["qry"][2][0] = f"{IMAGE_PLACEHOLDER}\n  {row['pos_text'][2].upper()}  "
    return ["query_differs_from_target: 1 offending text(s) or turn(s)"]


def _negative_equals_positive(row: Row, _: CorpusBuilder) -> list[str]:
    row["neg_text"][4] = "  " + row["pos_text"][4].title()
    return ["negative_differs_from_positive: 1 offending text(s) or turn(s)"]


def _copy_of(first: str) -> Mutation:
    """Every column but the record id copied from the good record ``first``."""

    def mutate(row: Row, builder: CorpusBuilder) -> list[str]:
        row.update({**copy.deepcopy(builder.good_rows[first]), "record_id": row["record_id"]})
        return [f"unique_record: {first}", f"unique_image: {first}"]

    return mutate


def _image_of(first: str) -> Mutation:
    """Own texts, but the image (path and hash) of the good record ``first``."""

    def mutate(row: Row, builder: CorpusBuilder) -> list[str]:
        original = builder.good_rows[first]
        row["qry_image_path"] = original["qry_image_path"]
        row["image_sha256"] = original["image_sha256"]
        return [f"unique_image: {first}"]

    return mutate


def _absolute_path(row: Row, builder: CorpusBuilder) -> list[str]:
    absolute = str(builder.image_root / row["qry_image_path"])
    row["qry_image_path"] = absolute
    return [f"image_path_safe: absolute_path: {absolute}"]


def _parent_reference(row: Row, builder: CorpusBuilder) -> list[str]:
    # The file exists: it is the path, not a missing file, that is rejected.
    (builder.base / "outside.png").write_bytes(
        (builder.image_root / row["qry_image_path"]).read_bytes()
    )
    row["qry_image_path"] = "../outside.png"
    return ["image_path_safe: parent_reference: ../outside.png"]


def _symlink_outside(row: Row, builder: CorpusBuilder) -> list[str]:
    builder.outside.mkdir(exist_ok=True)
    secret = builder.outside / "secret.png"
    secret.write_bytes((builder.image_root / row["qry_image_path"]).read_bytes())
    (builder.image_root / "escape").symlink_to(builder.outside, target_is_directory=True)
    row["qry_image_path"] = "escape/secret.png"
    return [f"image_path_safe: outside_root: escape/secret.png resolves to {secret.resolve()}"]


def _missing_file(row: Row, _: CorpusBuilder) -> list[str]:
    row["qry_image_path"] = "pool/never-written.png"
    return ["image_path_safe: missing_file: pool/never-written.png"]


def _windows_path(row: Row, _: CorpusBuilder) -> list[str]:
    row["qry_image_path"] = "C:\\images\\cat.png"
    return ["image_path_safe: absolute_path: C:\\images\\cat.png"]


def _bad_image(data: Callable[[], bytes], *details: str) -> Mutation:
    def mutate(row: Row, builder: CorpusBuilder) -> list[str]:
        payload = data()
        builder.replace_image(row, payload)
        return [detail.format(size=len(payload)) for detail in details]

    return mutate


def _truncated_png() -> bytes:
    data = _encode(_noise(11))
    return data[: len(data) // 2]


def _huge_declared_png() -> bytes:
    """1000 x 1000 pixels of one colour: few bytes on disk, too many pixels."""
    return _encode(Image.new("RGB", (1000, 1000), (10, 120, 200)))


def _hash_mismatch(row: Row, _: CorpusBuilder) -> list[str]:
    real = row["image_sha256"]
    claimed = _sha256(b"some other image")
    row["image_sha256"] = claimed
    return [f"image_hash_matches: record says {claimed[:12]}, file is {real[:12]}"]


def _exact_eval_copy(row: Row, builder: CorpusBuilder) -> list[str]:
    data = (builder.base / "bench" / "photo.png").read_bytes()
    builder.replace_image(row, data)
    return [f"no_eval_leakage: exact_image in bench: same bytes (sha256 {_sha256(data)[:12]})"]


def _near_eval_copy(row: Row, builder: CorpusBuilder) -> list[str]:
    """The evaluation photo resized to 70% and re-encoded as JPEG at quality 70."""
    with Image.open(builder.base / "bench" / "photo.png") as original:
        smaller = original.convert("RGB").resize((140, 105))
    row["qry_image_path"] = f"pool/{row['record_id']}.jpg"
    builder.replace_image(row, _encode(smaller, "JPEG", quality=70))
    return ["no_eval_leakage: near_image in bench: phash distance ", " to bench:photo.png"]


def _text_leak(row: Row, _: CorpusBuilder) -> list[str]:
    row["pos_text"][5] = "  the LIGHTHOUSE keeper   painted the red door of the STONE cottage "
    normalised = EVAL_SENTENCE.lower().rstrip(".")
    return [f"no_eval_leakage: text in bench: {normalised}"]


def _drop_column(column: str) -> Mutation:
    def mutate(row: Row, _: CorpusBuilder) -> list[str]:
        del row[column]
        return [f"{NO_NEGATIVES_SHARD}: not an M3T file, missing column(s) ['{column}']"]

    return mutate


def _plain_string_pos_text(row: Row, _: CorpusBuilder) -> list[str]:
    row["pos_text"] = "; ".join(row["pos_text"])
    return [
        f"{STRING_TARGETS_SHARD}: column pos_text is string, not readable as list<item: string>"
    ]


CORPUS = [
    # turn structure
    _kind("bad-six-turns", {"turn_count", "turn_types"}, _turns(6)),
    _kind("bad-eight-turns", {"turn_count", "turn_types"}, _turns(8)),
    # n_turns is the length of pos_text, so a short pos_text is also a wrong turn count.
    _kind(
        "bad-pos-text-shorter-than-qry",
        {"turn_count", "turn_shape", "turn_types"},
        _drop_last("pos_text"),
    ),
    _kind("bad-neg-text-shorter-than-qry", {"turn_shape"}, _drop_last("neg_text")),
    _kind(
        "bad-empty-paraphrase-list",
        {"turn_shape"},
        _set_turn("qry", 3, [], "turn_shape: every per-turn field has one entry per turn"),
    ),
    _kind(
        "bad-turn-types-null",
        {"turn_types"},
        _set("turn_types", None, "turn_types: turn types present, in M3T order for k = 7"),
    ),
    _kind("bad-turn-types-out-of-order", {"turn_types"}, _turn_types_swapped),
    # texts
    _kind(
        "bad-empty-answer",
        {"non_empty_texts"},
        _set_turn("pos_text", 2, "", "non_empty_texts: 1 offending text(s) or turn(s)"),
    ),
    _kind(
        "bad-whitespace-negative",
        {"non_empty_texts"},
        _set_turn("neg_text", 1, " \t ", "non_empty_texts: 1 offending text(s) or turn(s)"),
    ),
    _kind(
        "bad-none-in-pos-sentence",
        {"non_empty_texts"},
        _set_turn("pos_sentence", 6, None, "non_empty_texts: 1 offending text(s) or turn(s)"),
    ),
    _kind(
        "bad-empty-qry-sentence",
        {"non_empty_texts"},
        _set("qry_sentence", "", "non_empty_texts: 1 offending text(s) or turn(s)"),
    ),
    _kind(
        "bad-one-char-answer",
        {"text_min_length"},
        _set_turn("pos_text", 4, "A", "text_min_length: a text of 1 characters, minimum 2"),
    ),
    _kind(
        "bad-placeholder-plus-one-char-query",
        {"text_min_length"},
        _set_turn(
            "qry",
            0,
            [f"{IMAGE_PLACEHOLDER}\nQ"],
            "text_min_length: a text of 1 characters, minimum 2",
        ),
    ),
    _kind("bad-too-long-sentence", {"text_max_length"}, _too_long_sentence),
    _kind("bad-control-char-in-query", {"printable_text"}, _control_char_in_query),
    _kind("bad-zero-width-in-answer", {"printable_text"}, _zero_width_in_answer),
    _kind("bad-query-equals-target", {"query_differs_from_target"}, _query_equals_target),
    _kind(
        "bad-negative-equals-positive",
        {"negative_differs_from_positive"},
        _negative_equals_positive,
    ),
    # duplicates
    _kind("bad-exact-duplicate", {"unique_record", "unique_image"}, _copy_of("good-00")),
    _kind("bad-reused-image", {"unique_image"}, _image_of("good-01")),
    # paths
    _kind("bad-absolute-path", {"image_path_safe"}, _absolute_path),
    _kind("bad-windows-absolute-path", {"image_path_safe"}, _windows_path),
    _kind("bad-parent-reference", {"image_path_safe"}, _parent_reference),
    _kind("bad-symlink-outside-root", {"image_path_safe"}, _symlink_outside),
    _kind("bad-missing-file", {"image_path_safe"}, _missing_file),
    _kind(
        "bad-empty-path",
        {"image_path_safe"},
        _set("qry_image_path", "", "image_path_safe: missing_path: no image path"),
    ),
    _kind(
        "bad-pos-image-parent-reference",
        {"image_path_safe"},
        _set("pos_image_path", "../x.png", "image_path_safe: parent_reference: ../x.png"),
    ),
    # image files
    _kind(
        "bad-zero-byte-image",
        {"image_decodable"},
        _bad_image(lambda: b"", "image_decodable: empty_file: zero bytes"),
    ),
    _kind(
        "bad-truncated-png",
        {"image_decodable"},
        _bad_image(_truncated_png, "image_decodable: truncated: image file is truncated"),
    ),
    _kind(
        "bad-text-named-png",
        {"image_decodable"},
        _bad_image(
            lambda: b"just some notes, not a picture\n",
            "image_decodable: not_an_image: content is not a recognised image format",
        ),
    ),
    _kind(
        "bad-one-pixel-image",
        {"image_decodable"},
        _bad_image(
            lambda: _encode(Image.new("RGB", (1, 1), (200, 10, 10))),
            "image_decodable: too_small: 1x1 has a side below the minimum of 16",
        ),
    ),
    _kind(
        "bad-too-many-pixels",
        {"image_decodable"},
        _bad_image(
            _huge_declared_png,
            "image_decodable: too_many_pixels: declared size 1000x1000 exceeds the limit of "
            f"{LIMITS.max_pixels} pixels",
        ),
    ),
    _kind(
        "bad-too-many-bytes",
        {"image_decodable"},
        _bad_image(
            lambda: _encode(_noise(5, 320, 320, spread=90.0)),
            "image_decodable: too_many_bytes: {size} bytes exceeds the limit of "
            f"{LIMITS.max_bytes}",
        ),
    ),
    _kind("bad-hash-mismatch", {"image_hash_matches"}, _hash_mismatch),
    # leakage into the evaluation set
    _kind("bad-eval-image-exact-copy", {"no_eval_leakage"}, _exact_eval_copy),
    _kind("bad-eval-image-near-copy", {"no_eval_leakage"}, _near_eval_copy),
    _kind("bad-eval-text", {"no_eval_leakage"}, _text_leak),
    # shards whose columns are not M3T-shaped
    _kind(
        "bad-schema-missing-neg-text",
        {SCHEMA_EXPECTATION},
        _drop_column("neg_text"),
        NO_NEGATIVES_SHARD,
    ),
    _kind(
        "bad-schema-missing-neg-text-2",
        {SCHEMA_EXPECTATION},
        _drop_column("neg_text"),
        NO_NEGATIVES_SHARD,
    ),
    _kind(
        "bad-schema-string-pos-text",
        {SCHEMA_EXPECTATION},
        _plain_string_pos_text,
        STRING_TARGETS_SHARD,
    ),
]
KINDS = [pytest.param(kind, id=kind.record_id) for kind in CORPUS]


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class CorpusRun:
    """What went in (good rows, bad rows, expected detail fragments) and what came out."""

    report: ValidationReport
    image_root: Path
    good_rows: dict[str, Row]
    bad_rows: dict[str, Row]
    expected_details: dict[str, list[str]]
    valid: list[Row]
    quarantined: list[Row]
    quarantine_schemas: list[pa.Schema]

    def valid_by_id(self) -> dict[str, Row]:
        return {row["record_id"]: row for row in self.valid}

    def quarantined_by_id(self) -> dict[str, Row]:
        """Quarantine rows by record id; unreadable rows by the id inside their raw JSON."""
        return {
            row["record_id"] or json.loads(row["raw_record"])["record_id"]: row
            for row in self.quarantined
        }


def _write_eval_set(folder: Path) -> None:
    folder.mkdir()
    (folder / "photo.png").write_bytes(_encode(_photo()))
    (folder / "texts.txt").write_text(f"{EVAL_SENTENCE}\n", encoding="utf-8")


def _good_rows(builder: CorpusBuilder) -> dict[str, Row]:
    rows = {record_id: builder.good(record_id) for record_id in GOOD_IDS}
    jpeg = rows["good-jpeg"]
    jpeg["qry_image_path"] = "pool/good-jpeg.jpg"
    builder.replace_image(jpeg, _encode(_noise(3), "JPEG", quality=90))
    # A symlink inside the root to a file inside the root is safe.
    linked = rows["good-symlink-inside"]
    linked["image_sha256"] = builder.write_image("real/target.png", _encode(_noise(4)))
    (builder.image_root / "links").mkdir()
    (builder.image_root / "links" / "alias.png").symlink_to(Path("../real/target.png"))
    linked["qry_image_path"] = "links/alias.png"
    return rows


def _read_shards(folder: Path) -> tuple[list[Row], list[pa.Schema]]:
    shards = shard_paths(folder)
    rows = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    return rows, [pq.read_schema(shard) for shard in shards]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    base = tmp_path_factory.mktemp("corpus")
    builder = CorpusBuilder(base)
    _write_eval_set(base / "bench")
    builder.good_rows = _good_rows(builder)
    bad_rows: dict[str, Row] = {}
    expected_details: dict[str, list[str]] = {}
    readable = [*builder.good_rows.values()]
    unreadable: dict[str, list[Row]] = {}
    for kind in CORPUS:
        row = builder.good(kind.record_id)
        expected_details[kind.record_id] = kind.mutate(row, builder)
        bad_rows[kind.record_id] = row
        if kind.shard is None:
            readable.append(row)
        else:
            unreadable.setdefault(kind.shard, []).append(row)

    records = base / "records"
    table = pa.Table.from_pylist(readable, schema=RECORD_SCHEMA)
    write_table_shards(table, records, shard_size=16)
    for name, rows in unreadable.items():
        pq.write_table(pa.Table.from_pylist(rows), records / name)

    cfg = ValidateConfig(
        min_text_chars=2,
        max_text_chars=MAX_TEXT_CHARS,
        leakage=LeakageConfig(
            eval_sets=(EvalSetSpec(kind="folder", path=base / "bench", name="bench"),)
        ),
    )
    report = validate_records(
        records, builder.image_root, base / "out", base / "quarantine", cfg, LIMITS
    )
    valid, _ = _read_shards(base / "out")
    quarantined, schemas = _read_shards(base / "quarantine")
    return CorpusRun(
        report=report,
        image_root=builder.image_root,
        good_rows=builder.good_rows,
        bad_rows=bad_rows,
        expected_details=expected_details,
        valid=valid,
        quarantined=quarantined,
        quarantine_schemas=schemas,
    )


# --------------------------------------------------------------------------- tests


def test_corpus_is_large_and_ids_are_unique() -> None:
    ids = [kind.record_id for kind in CORPUS]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(GOOD_IDS)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_kind_is_quarantined_for_exactly_its_reasons(
    corpus_run: CorpusRun, kind: BadKind
) -> None:
    quarantined = corpus_run.quarantined_by_id()
    assert kind.record_id in quarantined
    assert kind.record_id not in corpus_run.valid_by_id()
    row = quarantined[kind.record_id]
    names = row["failed_expectations"]
    assert set(names) == kind.expected
    assert len(names) == len(kind.expected)
    details = row["failure_details"]
    assert [detail.split(":", 1)[0] for detail in details] == names
    for fragment in corpus_run.expected_details[kind.record_id]:
        assert any(fragment in detail for detail in details), (fragment, details)


@pytest.mark.parametrize("kind", KINDS)
def test_quarantined_row_keeps_the_original_record(corpus_run: CorpusRun, kind: BadKind) -> None:
    row = corpus_run.quarantined_by_id()[kind.record_id]
    original = corpus_run.bad_rows[kind.record_id]
    if kind.shard is None:
        assert {name: row[name] for name in RECORD_SCHEMA.names} == original
        assert row["raw_record"] is None
    else:
        assert json.loads(row["raw_record"]) == json.loads(json.dumps(original, default=str))
        assert all(row[name] is None for name in RECORD_SCHEMA.names)


def test_good_records_pass_unchanged(corpus_run: CorpusRun) -> None:
    assert corpus_run.valid_by_id() == corpus_run.good_rows
    assert len(corpus_run.valid) == len(GOOD_IDS)


def test_symlink_inside_the_root_is_a_valid_path(corpus_run: CorpusRun) -> None:
    link = corpus_run.image_root / "links" / "alias.png"
    assert link.is_symlink()
    assert link.resolve() == (corpus_run.image_root / "real" / "target.png").resolve()
    assert corpus_run.valid_by_id()["good-symlink-inside"]["qry_image_path"] == "links/alias.png"


def test_records_in_equal_valid_plus_quarantined(corpus_run: CorpusRun) -> None:
    report = corpus_run.report
    assert report.records == len(GOOD_IDS) + len(CORPUS)
    assert report.quarantined == len(CORPUS)
    assert report.valid == len(GOOD_IDS)
    assert report.records == report.valid + report.quarantined
    assert len(corpus_run.valid) == report.valid
    assert len(corpus_run.quarantined) == report.quarantined
    assert report.table_failures == []


def test_failed_by_expectation_counts_match_the_corpus(corpus_run: CorpusRun) -> None:
    expected = Counter(name for kind in CORPUS for name in kind.expected)
    names = [SCHEMA_EXPECTATION, *EXPECTATION_NAMES]
    assert {name: corpus_run.report.failed_by_expectation[name] for name in names} == {
        name: expected[name] for name in names
    }
    # every expectation is exercised by at least one kind of the corpus
    assert all(expected[name] >= 1 for name in names)


def test_quarantine_shards_have_the_quarantine_schema(corpus_run: CorpusRun) -> None:
    assert corpus_run.quarantine_schemas
    for schema in corpus_run.quarantine_schemas:
        assert schema.equals(QUARANTINE_SCHEMA, check_metadata=False)
