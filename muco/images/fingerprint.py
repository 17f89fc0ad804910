"""A content fingerprint of an image source: it changes exactly when new or changed images arrive.

The new-data sensor compares it with the fingerprint it saw last. Files are hashed by content
(sha256), not by name or time, so touching or renaming a file does not count as new data; a
memo keyed by (path, size, mtime) means an unchanged file is read only once per process.
Rendered scenes have no files before the pool is built: their fingerprint is that of their
parameters, which define them completely.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from muco.config import FolderSource, ImageSource, ScenesSource, TarSource, UrlListSource
from muco.images.sources import expand_shards

_BLOCK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}


def source_fingerprint(source: ImageSource, root: Path = Path(".")) -> str:
    """sha256 (hex) of everything the source would feed into the pool.

    ``root`` resolves relative paths (the project workspace). A folder counts its image files
    (by extension), tar shards and URL lists count their files whole.
    """
    kind = source.kind.encode() + b"\0"
    if isinstance(source, ScenesSource):
        settings = json.dumps(source.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(kind + settings).hexdigest()
    if isinstance(source, FolderSource):
        base = _resolved(root, source.path)
        if not base.is_dir():
            raise NotADirectoryError(f"images.source.path: {base} is not a directory")
        suffixes = {f".{ext.lower().lstrip('.')}" for ext in source.extensions}
        files = (p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        return _files_digest(kind, base, files)
    if isinstance(source, TarSource):
        pattern = source.shards
        shards = expand_shards(pattern if os.path.isabs(pattern) else str(root / pattern))
        return _files_digest(kind, root, shards)
    if isinstance(source, UrlListSource):
        path = _resolved(root, source.list)
        if not path.is_file():
            raise FileNotFoundError(f"images.source.list: {path} does not exist")
        return _files_digest(kind, path.parent, [path])
    raise TypeError(f"unknown image source {type(source).__name__}")


def _resolved(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _files_digest(prefix: bytes, base: Path, files: Iterable[Path]) -> str:
    digest = hashlib.sha256(prefix)
    for path in sorted(files):
        # Names relative to the source, so moving the whole source elsewhere changes nothing.
        name = path.relative_to(base) if path.is_relative_to(base) else path
        digest.update(name.as_posix().encode() + b"\0")
        digest.update(_content_sha256(path).encode())
    return digest.hexdigest()


def _content_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        content = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                content.update(block)
        _memo[key] = content.hexdigest()
    return _memo[key]
