"""Local image sources: a folder tree or webdataset tar shards, streamed in a deterministic order.

Both iterators yield one item per candidate image: a :class:`RawImage` (undecoded bytes plus
where they came from) or a :class:`SourceFailure` saying why that candidate cannot be used. Only
one sample's bytes are held at a time. Decoding is left to :mod:`muco.images.decode`.

Folder order is depth-first with the entries of each directory sorted by name, which is the
order of ``sorted()`` over the relative paths as :class:`~pathlib.PurePosixPath` objects. Tar
order is the order of the members in each shard, shards in the order given.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from glob import glob
from pathlib import Path, PurePosixPath
from typing import IO, Any

from muco.images.decode import RejectReason
from muco.images.formats import IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_EXTENSIONS",
    "RawImage",
    "SourceFailure",
    "SourceReason",
    "expand_shards",
    "iter_folder",
    "iter_tar_shards",
]

_SIDECAR_EXTENSIONS = (".json", ".txt")

_TAR_BLOCK = 512
# A tar archive ends with two zero blocks (POSIX ustar); fewer means the shard was cut short.
_END_OF_ARCHIVE = 2 * _TAR_BLOCK
_READ_CHUNK = 1 << 16
# A brace range longer than this is surely a typo, and would only exhaust memory.
_MAX_RANGE = 1_000_000
_BRACE = re.compile(r"\{([^{}]*)\}")
_NUMERIC_RANGE = re.compile(r"(\d+)\.\.(\d+)")


class SourceReason(StrEnum):
    """Why a candidate image could not be read from its source; stable codes for reports."""

    UNREADABLE = RejectReason.UNREADABLE.value
    TOO_MANY_BYTES = RejectReason.TOO_MANY_BYTES.value
    OUTSIDE_ROOT = "outside_root"
    SYMLINK_LOOP = "symlink_loop"
    MISSING_SHARD = "missing_shard"
    CORRUPT_SHARD = "corrupt_shard"
    UNSAFE_MEMBER_NAME = "unsafe_member_name"
    UNSUPPORTED_MEMBER = "unsupported_member"
    MISSING_IMAGE = "missing_image"
    BAD_SIDECAR = "bad_sidecar"
    DUPLICATE_KEY = "duplicate_key"


@dataclass(frozen=True)
class RawImage:
    """Undecoded image bytes with a stable key inside their source.

    ``key`` is the relative POSIX path for a folder and the webdataset key for a tar shard;
    ``origin`` is human-readable (the path, or ``shard.tar:member``); ``suffix`` is the lowercase
    extension including the dot; ``metadata`` holds a webdataset sample's ``.json`` sidecar fields
    and its ``.txt`` sidecar under ``"txt"``.
    """

    key: str
    data: bytes
    origin: str
    suffix: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceFailure:
    """A candidate image that could not be read; ``reason`` is a :class:`SourceReason` code."""

    key: str
    origin: str
    reason: str
    detail: str


# --------------------------------------------------------------------------- folders


def iter_folder(
    root: Path,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    *,
    max_bytes: int | None = None,
) -> Iterator[RawImage | SourceFailure]:
    """Yield every file below ``root`` whose extension is in ``extensions``, recursively.

    Hidden files and folders (name starting with ``.``) are skipped. Symbolic links are followed
    only while they stay inside ``root``; one that leaves it yields an ``outside_root`` failure.
    Files larger than ``max_bytes`` yield ``too_many_bytes`` without being read.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"image source is not a folder: {root}")
    wanted = frozenset(_dotted(extension) for extension in extensions)
    real_root = root.resolve()
    yield from _walk(root, root, real_root, (real_root,), wanted, max_bytes)


def _dotted(extension: str) -> str:
    extension = extension.lower()
    return extension if extension.startswith(".") else f".{extension}"


def _walk(
    folder: Path,
    root: Path,
    real_root: Path,
    ancestors: tuple[Path, ...],
    wanted: frozenset[str],
    max_bytes: int | None,
) -> Iterator[RawImage | SourceFailure]:
    """Depth-first walk; ``ancestors`` are the resolved folders being walked, to stop loops."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        yield _folder_failure(folder, root, SourceReason.UNREADABLE, f"cannot list: {_why(exc)}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. a symlink loop; reading the file below reports the error
            is_dir = False
        if not is_dir and Path(entry.name).suffix.lower() not in wanted:
            continue
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
            yield _folder_failure(path, root, SourceReason.SYMLINK_LOOP, str(exc))
            continue
        if not real.is_relative_to(real_root):
            detail = f"symbolic link to {real} leaves the folder {real_root}"
            yield _folder_failure(path, root, SourceReason.OUTSIDE_ROOT, detail)
        elif not is_dir:
            yield _read_file(path, root, max_bytes)
        elif real in ancestors:
            detail = f"symbolic link to {real}, which contains the link itself"
            yield _folder_failure(path, root, SourceReason.SYMLINK_LOOP, detail)
        else:
            yield from _walk(path, root, real_root, (*ancestors, real), wanted, max_bytes)


def _read_file(path: Path, root: Path, max_bytes: int | None) -> RawImage | SourceFailure:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return _folder_failure(path, root, SourceReason.UNREADABLE, "not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            detail = f"{info.st_size} bytes exceeds the limit of {max_bytes}"
            return _folder_failure(path, root, SourceReason.TOO_MANY_BYTES, detail)
        with path.open("rb") as handle:
            # Never more than one byte past the limit, in case the file grew since stat().
            data = handle.read(-1 if max_bytes is None else max_bytes + 1)
    except OSError as exc:
        return _folder_failure(path, root, SourceReason.UNREADABLE, _why(exc))
    key = path.relative_to(root).as_posix()
    return RawImage(key=key, data=data, origin=str(path), suffix=path.suffix.lower())


def _folder_failure(path: Path, root: Path, reason: SourceReason, detail: str) -> SourceFailure:
    key = path.relative_to(root).as_posix()
    return SourceFailure(key=key, origin=str(path), reason=reason, detail=detail)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- tar shards


def expand_shards(pattern: str) -> list[Path]:
    """Expand brace lists/ranges (``a-{000..009}.tar``, ``{train,val}.tar``) and globs.

    Ranges keep zero padding. Names without glob characters are kept even when the file does
    not exist (:func:`iter_tar_shards` reports it); a glob that matches nothing is an error.

    Raises:
        ValueError: malformed braces.
        FileNotFoundError: a glob matched no file.
    """
    shards: list[Path] = []
    for expanded in _expand_braces(pattern, pattern):
        if any(char in expanded for char in "*?["):
            matches = sorted(glob(expanded))
            if not matches:
                raise FileNotFoundError(f"no shard matches {expanded!r} (from {pattern!r})")
            shards.extend(Path(match) for match in matches)
        else:
            shards.append(Path(expanded))
    return list(dict.fromkeys(shards))


def _expand_braces(text: str, pattern: str) -> list[str]:
    match = _BRACE.search(text)  # innermost group first, so nesting works
    if match is None:
        if "{" in text or "}" in text:
            raise ValueError(f"unbalanced brace in shard pattern {pattern!r}")
        return [text]
    head, tail = text[: match.start()], text[match.end() :]
    return [
        expanded
        for option in _brace_options(match.group(1), pattern)
        for expanded in _expand_braces(head + option + tail, pattern)
    ]


def _brace_options(body: str, pattern: str) -> list[str]:
    numeric = _NUMERIC_RANGE.fullmatch(body)
    if numeric:
        first, last = numeric.groups()
        padded = any(len(end) > 1 and end.startswith("0") for end in (first, last))
        width = max(len(first), len(last)) if padded else 0
        start, stop = int(first), int(last)
        if abs(stop - start) >= _MAX_RANGE:
            raise ValueError(f"brace range {{{body}}} in {pattern!r} is too long")
        step = 1 if stop >= start else -1
        return [str(number).zfill(width) for number in range(start, stop + step, step)]
    if "," in body:
        return body.split(",")
    raise ValueError(
        f"unsupported brace expression {{{body}}} in shard pattern {pattern!r}: "
        "use {a,b} or {000..009}"
    )


def iter_tar_shards(
    shards: Sequence[Path], *, max_bytes: int | None = None
) -> Iterator[RawImage | SourceFailure]:
    """Yield one item per webdataset sample of each shard, shards in the given order.

    Members are grouped by key (the path up to the first dot of the basename) as long as they
    are contiguous. A sample's image is its first member by :data:`IMAGE_EXTENSIONS` order;
    ``.json`` and ``.txt`` sidecars become its metadata. Plain, gzip, bzip2 and xz shards are
    read as a stream, without writing anything to disk. A shard that turns out corrupt or
    truncated yields one ``corrupt_shard`` failure covering the rest of it, then the next shard
    is read. Members larger than ``max_bytes`` yield ``too_many_bytes`` without being read.
    """
    for shard in shards:
        yield from _iter_shard(Path(shard), max_bytes)


@dataclass
class _Sample:
    """The members of one webdataset sample collected so far."""

    key: str
    members: list[str] = field(default_factory=list)
    image_name: str = ""
    image_suffix: str = ""
    image: bytes = b""
    sidecars: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    failure: SourceFailure | None = None


class _TailReader:
    """A read-only stream that remembers its last few chunks.

    :mod:`tarfile` silently stops at a truncated or garbled header; keeping the bytes it read
    last lets :func:`_end_problem` look at what followed the last member.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._recent: deque[bytes] = deque(maxlen=4)
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self._recent.append(chunk)
        self.position += len(chunk)
        return chunk

    def recent(self) -> tuple[int, bytes]:
        """The remembered bytes and the stream position where they start."""
        data = b"".join(self._recent)
        return self.position - len(data), data


def _iter_shard(shard: Path, max_bytes: int | None) -> Iterator[RawImage | SourceFailure]:
    try:
        raw = shard.open("rb")
    except FileNotFoundError:
        yield _shard_failure(shard, SourceReason.MISSING_SHARD, f"shard not found: {shard}")
        return
    except OSError as exc:
        yield _shard_failure(shard, SourceReason.UNREADABLE, f"{shard}: {_why(exc)}")
        return
    seen: set[str] = set()
    sample: _Sample | None = None
    last_member = ""
    with raw:
        try:
            reader = _TailReader(_decompressed(raw))
            # Stream mode ("r|") reads members strictly in order and keeps no member list.
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for member in archive:
                    last_member = member.name
                    rejected = _member_problem(member, shard)
                    if rejected is not None:
                        yield rejected
                        continue
                    key = _member_key(member)
                    # Folders and hidden files (e.g. macOS "._" twins interleaved with a
                    # sample's members) belong to no sample and must not split one.
                    if key is None:
                        continue
                    if sample is not None and key != sample.key:
                        yield _finish(sample, shard, seen)
                        sample = None
                    sample = sample or _Sample(key)
                    _add_member(sample, archive, member, shard, max_bytes)
                problem = _end_problem(reader, archive.offset)
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        pending = f"; sample {sample.key!r} incomplete" if sample is not None else ""
        after = f"after member {last_member!r}" if last_member else "at the start"
        detail = f"{shard}: corrupt or truncated {after} ({problem}){pending}; rest skipped"
        yield _shard_failure(shard, SourceReason.CORRUPT_SHARD, detail)
    elif sample is not None:
        yield _finish(sample, shard, seen)


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    """``raw`` itself, or a decompressing stream when it starts with a compressor's magic."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _end_problem(reader: _TailReader, end_of_members: int) -> str | None:
    """Why the data after the last member is not a proper end of archive, or None."""
    if end_of_members > reader.position:
        return "archive ends inside a member's data"
    start, recent = reader.recent()
    trailing = recent[max(0, end_of_members - start) :]
    zeros = 0
    # Reading to the end also makes a compressed stream verify its checksum.
    while trailing:
        if trailing.strip(b"\0"):
            return f"unreadable data at byte {end_of_members + zeros}"
        zeros += len(trailing)
        trailing = reader.read(_READ_CHUNK)
    if zeros < _END_OF_ARCHIVE:
        return "archive ends without its end-of-archive marker"
    return None


def _member_key(member: tarfile.TarInfo) -> str | None:
    """The webdataset key of a member, or None for folders and hidden files."""
    path = PurePosixPath(member.name)
    if member.isdir() or not path.name or path.name.startswith("."):
        return None
    stem = path.name.split(".", 1)[0]
    return stem if path.parent == PurePosixPath(".") else f"{path.parent}/{stem}"


def _member_suffix(name: str) -> str:
    """Everything after the first dot of the basename, lowercased, with the dot."""
    basename = PurePosixPath(name).name
    return f".{basename.split('.', 1)[1].lower()}" if "." in basename else ""


def _member_problem(member: tarfile.TarInfo, shard: Path) -> SourceFailure | None:
    """A failure for members that must never be read: unsafe names and links or devices."""
    origin = f"{shard}:{member.name}"
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        detail = f"member name {member.name!r} in {shard} escapes the archive"
        return SourceFailure(member.name, origin, SourceReason.UNSAFE_MEMBER_NAME, detail)
    if not (member.isfile() or member.isdir()):
        detail = f"member {member.name!r} in {shard} is a link or special file"
        return SourceFailure(member.name, origin, SourceReason.UNSUPPORTED_MEMBER, detail)
    return None


def _add_member(
    sample: _Sample,
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    shard: Path,
    max_bytes: int | None,
) -> None:
    """Record ``member`` in ``sample``, reading its bytes only when the sample needs them."""
    suffix = _member_suffix(member.name)
    sample.members.append(suffix or member.name)
    is_image = suffix in IMAGE_EXTENSIONS
    if sample.failure is not None or not (is_image or suffix in _SIDECAR_EXTENSIONS):
        return
    if is_image and sample.image_suffix and _rank(suffix) >= _rank(sample.image_suffix):
        return
    if max_bytes is not None and member.size > max_bytes:
        detail = f"member {member.name!r} in {shard} has {member.size} bytes, over {max_bytes}"
        origin = f"{shard}:{member.name}"
        sample.failure = SourceFailure(sample.key, origin, SourceReason.TOO_MANY_BYTES, detail)
        return
    handle = archive.extractfile(member)
    data = handle.read() if handle is not None else b""
    if is_image:
        sample.image_name, sample.image_suffix, sample.image = member.name, suffix, data
    else:
        sample.sidecars[suffix] = (member.name, data)


def _rank(suffix: str) -> int:
    return IMAGE_EXTENSIONS.index(suffix)


def _finish(sample: _Sample, shard: Path, seen: set[str]) -> RawImage | SourceFailure:
    """Turn a complete sample into its image or the failure that stops it."""
    first_seen = sample.key not in seen
    seen.add(sample.key)
    if not first_seen:
        detail = f"sample {sample.key!r} in {shard} appears again after other samples"
        return _sample_failure(sample, shard, SourceReason.DUPLICATE_KEY, detail)
    if sample.failure is not None:
        return sample.failure
    if not sample.image_suffix:
        members = ", ".join(sample.members)
        detail = f"sample {sample.key!r} in {shard} has no image member (members: {members})"
        return _sample_failure(sample, shard, SourceReason.MISSING_IMAGE, detail)
    try:
        metadata = _metadata(sample.sidecars)
    except ValueError as exc:
        return _sample_failure(sample, shard, SourceReason.BAD_SIDECAR, f"{shard}: {exc}")
    return RawImage(
        key=sample.key,
        data=sample.image,
        origin=f"{shard}:{sample.image_name}",
        suffix=sample.image_suffix,
        metadata=metadata,
    )


def _metadata(sidecars: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """The merged sidecars of a sample; ValueError names the member that is unusable."""
    metadata: dict[str, Any] = {}
    if ".json" in sidecars:
        name, data = sidecars[".json"]
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"sidecar {name!r} is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ValueError(f"sidecar {name!r} holds a {type(parsed).__name__}, not an object")
        metadata.update(parsed)
    if ".txt" in sidecars:
        name, data = sidecars[".txt"]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"sidecar {name!r} is not UTF-8 text: {exc}") from exc
        if "txt" in metadata:
            raise ValueError(f"sidecar {name!r} clashes with a 'txt' field in the .json sidecar")
        metadata["txt"] = text
    return metadata


def _sample_failure(
    sample: _Sample, shard: Path, reason: SourceReason, detail: str
) -> SourceFailure:
    return SourceFailure(sample.key, f"{shard}:{sample.key}", reason, detail)


def _shard_failure(shard: Path, reason: SourceReason, detail: str) -> SourceFailure:
    return SourceFailure(key=shard.name, origin=str(shard), reason=reason, detail=detail)
