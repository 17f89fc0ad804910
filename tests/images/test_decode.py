"""Safe decoding: a corpus of bad and awkward images, built in the test, each with its verdict."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from muco.config import DecodeLimits
from muco.images.decode import (
    DecodedImage,
    ImageRejected,
    RejectReason,
    decode_file,
    decode_image,
    sha256_bytes,
)

LIMITS = DecodeLimits()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(size: tuple[int, int] = (64, 48)) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB, with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + png_chunk(b"IEND", b"")
    )


def rejection(data: bytes, limits: DecodeLimits = LIMITS, **kwargs: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, limits, origin="corpus/item", **kwargs)  # type: ignore[arg-type]
    assert caught.value.origin == "corpus/item"
    return caught.value


def test_good_image_decodes_with_sha256_of_original_bytes() -> None:
    data = encode(noise(), "PNG")
    decoded = decode_image(data, LIMITS, suffix=".png")
    assert isinstance(decoded, DecodedImage)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    assert (decoded.format, decoded.width, decoded.height) == ("PNG", 64, 48)
    assert decoded.image.mode == "RGB"
    assert decoded.notes == ()
    assert np.array_equal(np.asarray(decoded.image), np.asarray(noise()))


def test_zero_bytes_is_empty_file() -> None:
    assert rejection(b"").reason is RejectReason.EMPTY_FILE


def test_text_is_not_an_image() -> None:
    error = rejection(b"<html><body>404 not found</body></html>")
    assert error.reason is RejectReason.NOT_AN_IMAGE
    assert "corpus/item" in str(error) and "not_an_image" in str(error)


def test_over_max_bytes_is_rejected_before_decoding() -> None:
    data = encode(noise(), "PNG")
    error = rejection(data, DecodeLimits(max_bytes=len(data) - 1))
    assert error.reason is RejectReason.TOO_MANY_BYTES
    assert str(len(data)) in error.detail


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_fail_to_load(fmt: str) -> None:
    data = encode(noise(), fmt)
    error = rejection(data[: len(data) // 2])
    assert error.reason is RejectReason.TRUNCATED


def test_png_cut_inside_its_header_is_a_decode_error_not_a_non_image() -> None:
    error = rejection(encode(noise(), "PNG")[:40])
    assert error.reason is RejectReason.DECODE_ERROR
    assert "PNG" in error.detail


def test_one_pixel_image_is_too_small() -> None:
    error = rejection(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert error.reason is RejectReason.TOO_SMALL


def test_declared_size_over_limit_is_rejected_without_decoding(
    recwarn: pytest.WarningsRecorder,
) -> None:
    # 10000 x 10000 is above our limit and PIL's warning threshold, below PIL's hard limit.
    error = rejection(png_header_only(10_000, 10_000))
    assert error.reason is RejectReason.TOO_MANY_PIXELS
    assert "10000x10000" in error.detail
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_decompression_bomb_beyond_pil_limit_is_too_many_pixels() -> None:
    # 100000 x 100000 makes PIL itself raise DecompressionBombError while opening.
    limits = DecodeLimits(max_pixels=10**11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = rejection(png_header_only(100_000, 100_000), limits)
    assert error.reason is RejectReason.TOO_MANY_PIXELS


def test_wrong_extension_decodes_with_a_note() -> None:
    decoded = decode_image(encode(noise(), "PNG"), LIMITS, suffix=".jpg")
    assert decoded.format == "PNG"
    assert decoded.notes == ("extension .jpg but content is PNG",)


def test_matching_extension_has_no_note() -> None:
    assert decode_image(encode(noise(), "JPEG"), LIMITS, suffix=".JPEG").notes == ()


def test_cmyk_jpeg_becomes_rgb() -> None:
    red_in_cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    decoded = decode_image(encode(red_in_cmyk, "JPEG"), LIMITS)
    assert decoded.image.mode == "RGB"
    assert "converted from CMYK" in decoded.notes
    red, green, blue = decoded.image.getpixel((16, 16))
    assert red > 240 and green < 15 and blue < 15


def test_16_bit_grayscale_png_is_scaled_not_clipped() -> None:
    values = np.zeros((16, 16), dtype=np.uint16)
    values[:, 1], values[:, 2], values[:, 3] = 32768, 65535, 257
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    decoded = decode_image(encode(source, "PNG"), LIMITS)
    assert decoded.notes == ("16-bit scaled to 8-bit",)
    row = np.asarray(decoded.image)[0, :4]
    assert row.tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255], [1, 1, 1]]


def test_palette_png_with_transparent_index_is_composited_on_white() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.paste(1, (0, 0, 10, 20))
    decoded = decode_image(encode(image, "PNG", transparency=0), LIMITS)
    assert decoded.notes == ("converted from P", "alpha composited on white")
    assert decoded.image.getpixel((2, 2)) == (255, 0, 0)
    assert decoded.image.getpixel((15, 2)) == (255, 255, 255)  # was transparent black


def test_half_transparent_rgba_is_blended_with_white() -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 128))
    decoded = decode_image(encode(image, "PNG"), LIMITS)
    assert "alpha composited on white" in decoded.notes
    assert decoded.image.getpixel((0, 0)) == pytest.approx((127, 127, 127), abs=1)


def test_opaque_alpha_is_dropped_without_compositing() -> None:
    decoded = decode_image(encode(noise().convert("RGBA"), "PNG"), LIMITS)
    assert decoded.notes == ("converted from RGBA",)


def test_animated_gif_keeps_first_frame() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (20, 20), colour) for colour in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(data, LIMITS)
    assert "animated: first of 3 frames" in decoded.notes
    assert decoded.image.getpixel((10, 10)) == (255, 0, 0)


def test_exif_orientation_6_rotates_and_swaps_sides() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "JPEG", exif=exif, quality=95), LIMITS)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    assert decoded.notes == ("EXIF orientation 6 applied",)
    # Orientation 6 means "rotate 90° clockwise to display": the left half ends up on top.
    top_red = decoded.image.getpixel((10, 5))
    bottom_blue = decoded.image.getpixel((10, 35))
    assert top_red[0] > 240 and top_red[2] < 15
    assert bottom_blue[2] > 240 and bottom_blue[0] < 15


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("YCbCr", "TIFF")],
)
def test_every_mode_becomes_loaded_rgb(mode: str, fmt: str) -> None:
    data = encode(noise().convert(mode), fmt)
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (64, 48)
    assert decoded.notes  # every conversion leaves a note


def test_decode_file_reads_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(noise(), "PNG"))
    decoded = decode_file(path, LIMITS)
    assert decoded.notes == ("extension .jpg but content is PNG",)
    path.write_bytes(b"not an image")
    with pytest.raises(ImageRejected) as caught:
        decode_file(path, LIMITS)
    assert caught.value.origin == str(path)
    assert caught.value.reason is RejectReason.NOT_AN_IMAGE


def test_decode_file_checks_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 2000)
    with pytest.raises(ImageRejected) as caught:
        decode_file(path, DecodeLimits(max_bytes=1000))
    assert caught.value.reason is RejectReason.TOO_MANY_BYTES


@pytest.mark.parametrize("name", ["missing.png", "."])
def test_decode_file_errors_are_unreadable(tmp_path: Path, name: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_file(tmp_path / name, LIMITS)
    assert caught.value.reason is RejectReason.UNREADABLE
    assert str(tmp_path) in str(caught.value)
