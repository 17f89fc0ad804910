"""Safe decoding of untrusted image bytes into fully loaded RGB images.

Every image that enters the pipeline goes through :func:`decode_image`. It either returns a
:class:`DecodedImage` whose ``notes`` list each conversion that was applied, or raises
:class:`ImageRejected` carrying a machine-readable :class:`RejectReason`, a human detail and the
origin (file, URL or archive member) of the bytes. Nothing else escapes: PIL exceptions and
PIL warnings are translated, and no PIL global (``MAX_IMAGE_PIXELS``,
``LOAD_TRUNCATED_IMAGES``) is changed.

Order of checks, cheapest first: byte count, format detection, declared pixel count and shorter
side (read from the header, before any pixel is decoded), then the full decode, which fails on
truncated data.
"""

from __future__ import annotations

import hashlib
import io
import stat
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from muco.config import DecodeLimits

__all__ = [
    "DecodedImage",
    "ImageRejected",
    "RejectReason",
    "decode_file",
    "decode_image",
    "sha256_bytes",
]

# Leading bytes of common formats: data that starts like an image but that PIL cannot identify
# is a damaged image, not "not an image".
_SIGNATURES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}

# PIL reports some formats under a sibling name; a camera's multi-picture JPEG (MPO) is a
# perfectly normal ".jpg" file.
_SAME_FORMAT: dict[str, str] = {"MPO": "JPEG"}

# EXIF orientation value -> the transpose that makes the image display upright (EXIF 2.3, 4.6.4).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class RejectReason(StrEnum):
    """Why an image was rejected; the values are stable codes written to reports."""

    EMPTY_FILE = "empty_file"
    TOO_MANY_BYTES = "too_many_bytes"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    UNREADABLE = "unreadable"
    DECODE_ERROR = "decode_error"


class ImageRejected(Exception):
    """An image that cannot enter the pipeline, with a reason code, a detail and its origin."""

    def __init__(self, reason: RejectReason, detail: str, origin: str) -> None:
        super().__init__(reason, detail, origin)
        self.reason = reason
        self.detail = detail
        self.origin = origin

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class DecodedImage:
    """A fully loaded RGB image plus what was done to get it there.

    ``width`` and ``height`` are those of ``image``, i.e. after the EXIF orientation was applied.
    ``sha256`` is the hash of the original bytes, the project's content hash of the image.
    """

    image: Image.Image
    sha256: str
    format: str
    width: int
    height: int
    notes: tuple[str, ...]


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes,
    limits: DecodeLimits,
    *,
    origin: str = "<bytes>",
    suffix: str | None = None,
) -> DecodedImage:
    """Decode untrusted ``data`` into an RGB image within ``limits``.

    ``origin`` names the bytes in rejections. ``suffix`` is the extension the bytes were stored
    under; it only serves to add a note when it disagrees with the actual content.

    Raises:
        ImageRejected: the bytes are not a usable image; ``reason`` says why.
    """
    if not data:
        raise ImageRejected(RejectReason.EMPTY_FILE, "zero bytes", origin)
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            RejectReason.TOO_MANY_BYTES,
            f"{len(data)} bytes exceeds the limit of {limits.max_bytes}",
            origin,
        )
    # PIL reports decompression bombs through its own global limit as a warning or an error; our
    # limit is the authoritative one, so its warnings are recorded here rather than leaking out.
    # Other PIL warnings (corrupt EXIF, ...) become notes so they are not lost either.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, fmt, notes = _decode(data, limits, origin)
    notes.extend(
        f"PIL warning: {w.message}"
        for w in caught
        if not issubclass(w.category, Image.DecompressionBombWarning)
    )
    if suffix:
        extension_note = _extension_note(suffix, fmt)
        if extension_note:
            notes.append(extension_note)
    return DecodedImage(
        image=image,
        sha256=sha256_bytes(data),
        format=fmt,
        width=image.width,
        height=image.height,
        notes=tuple(notes),
    )


def decode_file(path: Path, limits: DecodeLimits) -> DecodedImage:
    """Read and decode the image file at ``path``; see :func:`decode_image`.

    The size on disk is checked against ``limits.max_bytes`` before anything is read, and no more
    than one byte past the limit is ever read (the file may grow in between).

    Raises:
        ImageRejected: ``unreadable`` for file-system errors, otherwise as :func:`decode_image`.
    """
    origin = str(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected(RejectReason.UNREADABLE, "not a regular file", origin)
        if info.st_size > limits.max_bytes:
            raise ImageRejected(
                RejectReason.TOO_MANY_BYTES,
                f"{info.st_size} bytes exceeds the limit of {limits.max_bytes}",
                origin,
            )
        with path.open("rb") as handle:
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageRejected(RejectReason.UNREADABLE, _os_error_detail(exc), origin) from exc
    return decode_image(data, limits, origin=origin, suffix=path.suffix)


def _os_error_detail(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _decode(data: bytes, limits: DecodeLimits, origin: str) -> tuple[Image.Image, str, list[str]]:
    """Open, check, load and convert; returns a detached RGB image, the format and the notes."""
    notes: list[str] = []
    try:
        with _open_checked(data, limits, origin) as source:
            fmt = _SAME_FORMAT.get(source.format or "", source.format or "unknown")
            frames = getattr(source, "n_frames", 1)
            if frames > 1:
                source.seek(0)
                notes.append(f"animated: first of {frames} frames")
            source.load()
            orientation = _orientation(source, notes)
            image = _to_rgb(source, notes)
    except ImageRejected:
        raise
    except Exception as exc:  # untrusted input: whatever PIL raises must become a rejection
        raise _rejection(exc, origin) from exc
    if orientation in _ORIENTATION_TRANSPOSE:
        image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
        notes.append(f"EXIF orientation {orientation} applied")
    return image, fmt, notes


def _open_checked(data: bytes, limits: DecodeLimits, origin: str) -> Image.Image:
    """Open lazily (header only) and enforce the pixel and side limits on the declared size."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        family = next((name for sig, name in _SIGNATURES.items() if data.startswith(sig)), None)
        if family is None:
            raise ImageRejected(
                RejectReason.NOT_AN_IMAGE, "content is not a recognised image format", origin
            ) from exc
        raise ImageRejected(
            RejectReason.DECODE_ERROR,
            f"starts like a {family} file but its header cannot be parsed (truncated or corrupt)",
            origin,
        ) from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(
            RejectReason.TOO_MANY_PIXELS,
            f"declared size {width}x{height} exceeds the limit of {limits.max_pixels} pixels",
            origin,
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            RejectReason.TOO_SMALL,
            f"{width}x{height} has a side below the minimum of {limits.min_side}",
            origin,
        )
    return image


def _rejection(exc: BaseException, origin: str) -> ImageRejected:
    """Translate an exception raised by PIL while opening or decoding into a rejection."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError):
        # Only reachable when our limit is above PIL's hard limit (2 * MAX_IMAGE_PIXELS).
        return ImageRejected(RejectReason.TOO_MANY_PIXELS, message, origin)
    if isinstance(exc, EOFError) or "truncated" in message.lower():
        return ImageRejected(RejectReason.TRUNCATED, message, origin)
    return ImageRejected(RejectReason.DECODE_ERROR, f"{type(exc).__name__}: {message}", origin)


def _orientation(image: Image.Image, notes: list[str]) -> int:
    """The EXIF orientation of ``image`` (1 = upright); unreadable EXIF is noted and ignored."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        notes.append(f"EXIF unreadable, orientation ignored: {exc}")
        return 1
    if not isinstance(value, int) or value not in (1, *_ORIENTATION_TRANSPOSE):
        notes.append(f"EXIF orientation {value!r} is invalid and was ignored")
        return 1
    return value


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any PIL mode to a new RGB image, compositing transparency on white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # PIL's own I;16 -> L conversion clips at 255 instead of scaling, so scale here. Mode I
        # (32-bit) carries no bit depth; its usual sources (PGM, TIFF) hold 16-bit samples.
        notes.append(
            "16-bit scaled to 8-bit"
            if mode != "I"
            else "32-bit integer read as 16-bit and scaled to 8-bit"
        )
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        notes.append("32-bit float clipped to 8-bit")
        values = np.clip(np.asarray(image, dtype=np.float64), 0.0, 255.0)
        return Image.fromarray(np.rint(values).astype(np.uint8)).convert("RGB")
    if mode != "RGB":
        notes.append(f"converted from {mode}")
    if mode not in _ALPHA_MODES and "transparency" not in image.info:
        # convert() also copies an RGB image, detaching it from the source file object.
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    if rgba.getextrema()[3][0] == 255:
        return rgba.convert("RGB")
    notes.append("alpha composited on white")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _extension_note(suffix: str, fmt: str) -> str | None:
    """A note when the file extension does not name the format of the content."""
    extension = suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}"
    expected = Image.registered_extensions().get(extension)
    if _SAME_FORMAT.get(expected or "", expected) == fmt:
        return None
    return f"extension {extension} but content is {fmt}"
