"""Image file extensions the project ingests, in order of preference."""

from __future__ import annotations

# Also the preference order when a webdataset sample holds several images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
)
