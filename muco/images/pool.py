"""The image pool: every image a run may use, decoded safely, hashed, and listed in a manifest.

Layout of a pool directory (the ``images`` stage writes ``data/images/``)::

    manifest.parquet   one row per accepted image (columns in MANIFEST_SCHEMA)
    rejects.parquet    one row per rejected input: which one, the reason code, the detail
    downloads.parquet  URL sources only: one status row per URL (link rot is normal)
    provenance.json    stage, code and params fingerprints, source description
    preview.png        a contact sheet of the first few images, for people and the UI
    scenes/{split}/    rendered scenes: ``{id}.png`` plus the scene graph ``{id}.json``
    files/ab/{sha}.ext ingested images, stored once per content hash with their original bytes

Ingested images keep their original bytes (the content hash is the sha256 of those bytes, the
identity later stages mask and deduplicate by); decoding here only proves they are usable.
Nothing is lost silently: every input ends as one manifest row or one reject row.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from muco.config import (
    DecodeLimits,
    FolderSource,
    ImagesConfig,
    ScenesSource,
    TarSource,
    UrlListSource,
    params_hash,
)
from muco.images import scenes
from muco.images.decode import ImageRejected, decode_image, sha256_bytes
from muco.images.sources import RawImage, SourceFailure, expand_shards, iter_folder, iter_tar_shards
from muco.images.urls import (
    DownloadSettings,
    UrlItem,
    download_urls,
    read_url_list,
    write_status_report,
)
from muco.io import atomic_directory, atomic_write_bytes, atomic_write_json
from muco.provenance import provenance

MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
DOWNLOADS = "downloads.parquet"
PREVIEW = "preview.png"
PROVENANCE = "provenance.json"

MANIFEST_SCHEMA = pa.schema(
    [
        (
            "image_id",
            pa.string(),
        ),  # scene id, or the source's key (relative path, tar key, URL key)
        ("path", pa.string()),  # relative to the pool root, POSIX
        ("sha256", pa.string()),  # of the stored bytes
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("split", pa.string()),  # scenes: train / test / test_unseen; ingested: train
        ("source", pa.string()),  # scenes / folder / tar / urls
        ("origin", pa.string()),  # where it came from, for people
        ("scene_graph", pa.string()),  # relative path of the scene-graph JSON, scenes only
        ("metadata", pa.string()),  # JSON: webdataset sidecars, download details
        ("notes", pa.list_(pa.string())),  # conversions the decoder applied
    ]
)
REJECTS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("origin", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
CODE = ("images", "config.py", "io.py", "provenance.py")
THUMBNAIL_SIDE = 96


@dataclass
class PoolSummary:
    """What a pool build produced; ``metrics()`` is the stage's DVC metrics JSON.

    The metrics hold no wall-clock time: they are a DVC output, and a re-run on another machine
    must reproduce ``dvc.lock`` exactly. ``seconds`` is printed, not recorded.
    """

    source: str
    images_by_split: Counter[str] = field(default_factory=Counter)
    rejects_by_reason: Counter[str] = field(default_factory=Counter)
    stored_bytes: int = 0
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return sum(self.images_by_split.values())

    @property
    def rejected(self) -> int:
        return sum(self.rejects_by_reason.values())

    def metrics(self) -> dict:
        return {
            "source": self.source,
            "images": self.images,
            "images_by_split": dict(sorted(self.images_by_split.items())),
            "rejected": self.rejected,
            "rejects_by_reason": dict(sorted(self.rejects_by_reason.items())),
            "stored_bytes": self.stored_bytes,
        }


class _PoolWriter:
    """Collects manifest and reject rows while images are stored under the pool root."""

    def __init__(self, root: Path, source: str, summary: PoolSummary) -> None:
        self.root = root
        self.source = source
        self.summary = summary
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self._first_key_by_hash: dict[str, str] = {}
        self._first_scene_by_split_hash: dict[tuple[str, str], str] = {}

    def reject(self, key: str, origin: str, reason: str, detail: str) -> None:
        self.rejects.append({"key": key, "origin": origin, "reason": reason, "detail": detail})
        self.summary.rejects_by_reason[reason] += 1

    def add_scene(self, scene: scenes.Scene, image_size: int) -> None:
        """Render and store one scene, unless its split already holds the same pixels.

        Small single-object scenes can render identically (jitter and rotation below a pixel);
        the later one is rejected as a duplicate. Across splits identical scenes are kept, so a
        benchmark split never depends on the size of another; the validation gate's leakage
        check keeps them out of training.
        """
        data = scenes.png_bytes(scenes.render_scene(scene, image_size))
        sha256 = sha256_bytes(data)
        first = self._first_scene_by_split_hash.setdefault((scene.split, sha256), scene.scene_id)
        if first != scene.scene_id:
            origin = f"scenes:{scene.scene_id}"
            self.reject(scene.scene_id, origin, "duplicate", f"renders the same pixels as {first}")
            return
        png_path, json_path = scenes.write_scene(scene, image_size, self.root / "scenes", data)
        self._add_row(
            image_id=scene.scene_id,
            path=png_path.relative_to(self.root).as_posix(),
            sha256=sha256,
            size=(image_size, image_size),
            fmt="PNG",
            split=scene.split,
            origin=f"scenes:{scene.scene_id}",
            scene_graph=json_path.relative_to(self.root).as_posix(),
            metadata={},
            notes=(),
            nbytes=len(data),
        )

    def add_raw(self, raw: RawImage, limits: DecodeLimits, metadata: dict | None = None) -> None:
        """Decode, deduplicate by content hash and store one ingested image."""
        try:
            decoded = decode_image(raw.data, limits, origin=raw.origin, suffix=raw.suffix)
        except ImageRejected as rejection:
            self.reject(raw.key, raw.origin, str(rejection.reason), rejection.detail)
            return
        first = self._first_key_by_hash.get(decoded.sha256)
        if first is not None:
            self.reject(raw.key, raw.origin, "duplicate", f"same bytes as {first}")
            return
        relative = f"files/{decoded.sha256[:2]}/{decoded.sha256}{_extension(decoded.format)}"
        atomic_write_bytes(self.root / relative, raw.data)
        self._add_row(
            image_id=raw.key,
            path=relative,
            sha256=decoded.sha256,
            size=(decoded.width, decoded.height),
            fmt=decoded.format,
            split="train",
            origin=raw.origin,
            scene_graph=None,
            metadata={**raw.metadata, **(metadata or {})},
            notes=decoded.notes,
            nbytes=len(raw.data),
        )

    def _add_row(
        self,
        *,
        image_id: str,
        path: str,
        sha256: str,
        size: tuple[int, int],
        fmt: str,
        split: str,
        origin: str,
        scene_graph: str | None,
        metadata: dict,
        notes: Iterable[str],
        nbytes: int,
    ) -> None:
        self._first_key_by_hash.setdefault(sha256, image_id)
        self.rows.append(
            {
                "image_id": image_id,
                "path": path,
                "sha256": sha256,
                "width": size[0],
                "height": size[1],
                "format": fmt,
                "split": split,
                "source": self.source,
                "origin": origin,
                "scene_graph": scene_graph,
                "metadata": json.dumps(metadata, sort_keys=True, default=str),
                "notes": list(notes),
            }
        )
        self.summary.images_by_split[split] += 1
        self.summary.stored_bytes += nbytes

    def finish(self, preview_count: int, provenance_record: dict) -> None:
        pq.write_table(
            pa.Table.from_pylist(self.rows, schema=MANIFEST_SCHEMA), self.root / MANIFEST
        )
        pq.write_table(
            pa.Table.from_pylist(self.rejects, schema=REJECTS_SCHEMA), self.root / REJECTS
        )
        atomic_write_json(self.root / PROVENANCE, provenance_record)
        if preview_count and self.rows:
            paths = [self.root / row["path"] for row in self.rows[:preview_count]]
            contact_sheet(paths).save(self.root / PREVIEW, format="PNG")


def build_pool(cfg: ImagesConfig, out_dir: Path, *, progress: bool = False) -> PoolSummary:
    """Build the image pool described by ``cfg`` into ``out_dir``, replacing it atomically."""
    started = time.perf_counter()
    source = cfg.source
    summary = PoolSummary(source=source.kind)
    with atomic_directory(out_dir) as root:
        writer = _PoolWriter(root, source.kind, summary)
        if isinstance(source, ScenesSource):
            for scene in scenes.generate_scenes(
                source.seed,
                source.counts.model_dump(),
                min_objects=source.min_objects,
                max_objects=source.max_objects,
            ):
                writer.add_scene(scene, source.image_size)
        elif isinstance(source, UrlListSource):
            _ingest_urls(source, cfg.limits, writer, root, progress=progress)
        else:
            for item in _local_items(source, cfg.limits):
                if isinstance(item, SourceFailure):
                    writer.reject(item.key, item.origin, item.reason, item.detail)
                else:
                    writer.add_raw(item, cfg.limits)
        record = provenance(
            "images",
            params_hash(cfg),
            CODE,
            source=source.model_dump(mode="json"),
        )
        writer.finish(cfg.preview_count, record)
    summary.seconds = time.perf_counter() - started
    return summary


def _local_items(
    source: FolderSource | TarSource, limits: DecodeLimits
) -> Iterator[RawImage | SourceFailure]:
    # max_bytes here keeps an oversized file from ever being read into memory.
    if isinstance(source, FolderSource):
        return iter_folder(source.path, source.extensions, max_bytes=limits.max_bytes)
    return iter_tar_shards(expand_shards(source.shards), max_bytes=limits.max_bytes)


def _ingest_urls(
    source: UrlListSource, limits: DecodeLimits, writer: _PoolWriter, root: Path, *, progress: bool
) -> None:
    items = read_url_list(source.list, source.url_column, source.key_column)
    settings = DownloadSettings(
        concurrency=source.concurrency,
        timeout_s=source.timeout_s,
        retries=source.retries,
        backoff_s=source.backoff_s,
        max_bytes=limits.max_bytes,
    )

    def store(item: UrlItem, data: bytes, status: object) -> None:
        suffix = Path(item.url.split("?", 1)[0]).suffix.lower()
        raw = RawImage(key=item.key, data=data, origin=item.url, suffix=suffix, metadata={})
        writer.add_raw(raw, limits, metadata={"url": item.url})

    statuses = download_urls(items, settings, store, progress=progress)
    for status in statuses:
        if status.status != "ok":
            writer.reject(status.key, status.url, status.status, status.error or status.status)
    write_status_report(statuses, root / DOWNLOADS)


def contact_sheet(paths: list[Path], side: int = THUMBNAIL_SIDE, columns: int = 4) -> Image.Image:
    """Thumbnails of ``paths`` on a grid, ``columns`` wide: a quick look at what the pool holds."""
    rows = -(-len(paths) // columns)
    sheet = Image.new("RGB", (columns * side, rows * side), (255, 255, 255))
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            thumbnail = image.convert("RGB")
            thumbnail.thumbnail((side, side))
        x, y = (index % columns) * side, (index // columns) * side
        sheet.paste(
            thumbnail, (x + (side - thumbnail.width) // 2, y + (side - thumbnail.height) // 2)
        )
    return sheet


def read_manifest(pool_dir: Path) -> pa.Table:
    """The manifest of a pool directory; a clear error when the pool has not been built."""
    path = Path(pool_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no image pool at {pool_dir}: {MANIFEST} is missing")
    return pq.read_table(path)


def _extension(fmt: str) -> str:
    return {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, f".{fmt.lower()}")
