"""The synthesis cache: keyed by image and generator identity; transient failures never cached."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from muco.synthesis.cache import SynthesisCache
from muco.synthesis.content import M3T_TURN_TYPES, M3TContent
from muco.synthesis.generators.base import Rejection

IDENTITY = {"generator": "openai", "model": "m", "prompt_version": "m3t-v1", "sampling": {"t": 0}}
CONTENT = M3TContent(
    qry=tuple((f"q{i}",) for i in range(7)),
    pos_text=tuple(f"a{i}" for i in range(7)),
    pos_sentence=tuple(f"A{i}." for i in range(7)),
    neg_text=tuple(f"n{i}" for i in range(7)),
    qry_sentence="d",
    turn_types=M3T_TURN_TYPES,
)


def test_round_trip_keeps_content_and_time(tmp_path: Path) -> None:
    cache = SynthesisCache(tmp_path, IDENTITY)
    when = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert cache.get("abc") is None
    assert cache.put("abc", CONTENT, when)
    entry = cache.get("abc")
    assert entry is not None and entry.outcome == CONTENT and entry.created_at == when


def test_rejections_are_cached_but_transient_ones_are_not(tmp_path: Path) -> None:
    cache = SynthesisCache(tmp_path, IDENTITY)
    assert cache.put("bad", Rejection("invalid_json", "no object"))
    assert cache.get("bad").outcome == Rejection("invalid_json", "no object")
    assert not cache.put("busy", Rejection("http_503", "overloaded", cacheable=False))
    assert cache.get("busy") is None


def test_any_identity_change_misses(tmp_path: Path) -> None:
    SynthesisCache(tmp_path, IDENTITY).put("abc", CONTENT)
    for change in ({"model": "other"}, {"prompt_version": "m3t-v2"}, {"sampling": {"t": 1}}):
        assert SynthesisCache(tmp_path, {**IDENTITY, **change}).get("abc") is None
    assert SynthesisCache(tmp_path, dict(IDENTITY)).get("abc") is not None


def test_corrupt_entry_counts_as_missing(tmp_path: Path) -> None:
    cache = SynthesisCache(tmp_path, IDENTITY)
    cache.put("abc", CONTENT)
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text('{"status": "ok", "content": {"qry": [')
    assert cache.get("abc") is None
