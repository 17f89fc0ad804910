"""A content-addressed cache of generator outcomes: resumable runs and incremental re-runs.

The key is sha256 of (image content hash, generator identity): generator kind, model, prompt
version and sampling parameters. A killed run restarts where it stopped (every finished image
was written as soon as it finished); a re-run with new images pays only for those; changing the
model, prompt or sampling changes the key, so nothing stale is ever reused. Each entry is one
small JSON file written atomically; transient failures (network, overload) are never cached.

The location is a machine specific, from ``$MUCO_CACHE_DIR`` (DESIGN.md rule 2).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from muco.io import atomic_write_json
from muco.synthesis.content import M3TContent
from muco.synthesis.generators.base import Outcome, Rejection

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$MUCO_CACHE_DIR/synthesis``, or ``.cache/muco/synthesis`` in the working directory."""
    base = os.environ.get("MUCO_CACHE_DIR")
    return Path(base) / "synthesis" if base else Path(".cache") / "muco" / "synthesis"


@dataclass(frozen=True)
class CacheEntry:
    """A cached outcome and when it was generated."""

    outcome: Outcome
    created_at: datetime


class SynthesisCache:
    """Outcomes of one generator identity, addressed by image content hash."""

    def __init__(self, root: Path, identity: dict[str, Any]) -> None:
        self.root = Path(root)
        self.identity = identity
        self._identity_json = json.dumps(identity, sort_keys=True)

    def key(self, image_sha256: str) -> str:
        return hashlib.sha256(f"{image_sha256}\n{self._identity_json}".encode()).hexdigest()

    def _path(self, image_sha256: str) -> Path:
        key = self.key(image_sha256)
        return self.root / key[:2] / f"{key}.json"

    def get(self, image_sha256: str) -> CacheEntry | None:
        """The cached entry, or None. A corrupt entry counts as missing and is regenerated."""
        path = self._path(image_sha256)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            created_at = datetime.fromisoformat(entry["created_at"])
            if entry["status"] == "ok":
                return CacheEntry(M3TContent.from_dict(entry["content"]), created_at)
            return CacheEntry(Rejection(entry["reason"], entry["detail"]), created_at)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None

    def put(self, image_sha256: str, outcome: Outcome, created_at: datetime | None = None) -> bool:
        """Store ``outcome``; returns False (and stores nothing) for a transient rejection."""
        if isinstance(outcome, Rejection) and not outcome.cacheable:
            return False
        created_at = created_at or datetime.now(UTC)
        entry: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "image_sha256": image_sha256,
            "identity": self.identity,
            "created_at": created_at.isoformat(),
        }
        if isinstance(outcome, Rejection):
            entry.update(status="rejected", reason=outcome.reason, detail=outcome.detail)
        else:
            entry.update(status="ok", content=outcome.to_dict())
        atomic_write_json(self._path(image_sha256), entry)
        return True
