"""Provenance carried by every artifact (DESIGN.md rule 6).

Deliberately free of timestamps and commit ids: an artifact's bytes depend only on its inputs,
its parameters and the code that made it, so DVC sees an identical re-run as identical.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

import muco

PACKAGE_ROOT = Path(muco.__file__).resolve().parent


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare checkout)."""
    try:
        return metadata.version("muco-pipeline")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def code_fingerprint(*relative_paths: str) -> str:
    """sha256 over the Python sources of the given files or folders under ``muco/``.

    Folders are walked in sorted order; each file contributes its relative path and bytes, so
    a rename or an edit changes the fingerprint and nothing else does.
    """
    digest = hashlib.sha256()
    for relative in relative_paths:
        target = PACKAGE_ROOT / relative
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for file in files:
            digest.update(file.relative_to(PACKAGE_ROOT).as_posix().encode())
            digest.update(b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()


def provenance(stage: str, params_sha256: str, code: tuple[str, ...], **extra: Any) -> dict:
    """The provenance record of one stage output."""
    return {
        "stage": stage,
        "muco_version": package_version(),
        "params_sha256": params_sha256,
        "code_sha256": code_fingerprint(*code),
        **extra,
    }
