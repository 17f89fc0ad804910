"""The image pool: every input ends as one manifest row or one reject row, nothing else."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from muco.config import ImagesConfig, load_params
from muco.images import scenes
from muco.images.decode import sha256_bytes
from muco.images.pool import (
    MANIFEST,
    PREVIEW,
    PROVENANCE,
    REJECTS,
    PoolSummary,
    _PoolWriter,
    build_pool,
    read_manifest,
)
from muco.stages import images as images_stage


def _png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _scenes_config(**counts: int) -> ImagesConfig:
    return ImagesConfig.model_validate(
        {"source": {"kind": "scenes", "image_size": 56, "counts": counts}, "preview_count": 4}
    )


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def test_scene_pool_lists_every_scene_with_its_graph_and_hash(tmp_path: Path) -> None:
    summary = build_pool(_scenes_config(train=6, test=2, test_unseen=3), tmp_path / "pool")
    pool = tmp_path / "pool"
    rows = _rows(read_manifest(pool))
    assert summary.images == len(rows) == 11
    assert dict(summary.images_by_split) == {"train": 6, "test": 2, "test_unseen": 3}
    for row in rows:
        data = (pool / row["path"]).read_bytes()
        assert row["sha256"] == sha256_bytes(data)
        graph = json.loads((pool / row["scene_graph"]).read_text())
        assert graph["scene_id"] == row["image_id"] and graph["split"] == row["split"]
        assert (row["width"], row["height"]) == (56, 56)
    assert (pool / PREVIEW).exists()
    assert pq.read_table(pool / REJECTS).num_rows == 0
    provenance = json.loads((pool / PROVENANCE).read_text())
    assert provenance["stage"] == "images" and len(provenance["params_sha256"]) == 64


def test_scene_pool_is_byte_identical_across_builds(tmp_path: Path) -> None:
    config = _scenes_config(train=5, test=1, test_unseen=1)
    build_pool(config, tmp_path / "a")
    build_pool(config, tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    for relative in files_a:
        if (tmp_path / "a" / relative).is_file():
            assert (tmp_path / "a" / relative).read_bytes() == (
                tmp_path / "b" / relative
            ).read_bytes(), relative


def test_scenes_rendering_the_same_pixels_are_one_image_per_split(tmp_path: Path) -> None:
    # Small single-object scenes can render identically (at 112 px, train-002546 of seed 0
    # repeats an earlier scene); a pool must list each content once per split, as synthesis
    # keys records by content hash.
    scene = scenes.generate_scene(0, "train", 0)
    twin = dataclasses.replace(scene, scene_id="train-000001")
    other_split = dataclasses.replace(scene, scene_id="test-000000", split="test")
    summary = PoolSummary(source="scenes")
    writer = _PoolWriter(tmp_path, "scenes", summary)
    for item in (scene, twin, other_split):
        writer.add_scene(item, 56)
    assert [row["image_id"] for row in writer.rows] == ["train-000000", "test-000000"]
    assert writer.rejects == [
        {
            "key": "train-000001",
            "origin": "scenes:train-000001",
            "reason": "duplicate",
            "detail": "renders the same pixels as train-000000",
        }
    ]
    assert not (tmp_path / "scenes" / "train" / "train-000001.png").exists()
    assert summary.rejects_by_reason == {"duplicate": 1}


def test_train_scenes_in_the_pool_never_hold_held_out_pairs(tmp_path: Path) -> None:
    build_pool(_scenes_config(train=60, test=0, test_unseen=20), tmp_path / "pool")
    held_out = scenes.held_out_pairs()
    for row in _rows(read_manifest(tmp_path / "pool")):
        graph = scenes.scene_from_dict(
            json.loads((tmp_path / "pool" / row["scene_graph"]).read_text())
        )
        pairs = {(obj.colour, obj.shape) for obj in graph.objects}
        assert bool(pairs & held_out) == (row["split"] == "test_unseen")


def _folder_config(path: Path) -> ImagesConfig:
    return ImagesConfig.model_validate(
        {"source": {"kind": "folder", "path": str(path)}, "limits": {"min_side": 8}}
    )


def test_folder_pool_accounts_for_every_input(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    (folder / "red.png").write_bytes(red)
    (folder / "sub" / "blue.png").write_bytes(blue)
    (folder / "sub" / "red-copy.png").write_bytes(red)  # same bytes: a duplicate
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_bytes(b"these are not pixels")
    (folder / "cut.png").write_bytes(blue[: len(blue) // 2])

    summary = build_pool(_folder_config(folder), tmp_path / "pool")
    rows = _rows(read_manifest(tmp_path / "pool"))
    rejects = {r["key"]: r for r in _rows(pq.read_table(tmp_path / "pool" / REJECTS))}

    assert sorted(r["image_id"] for r in rows) == ["red.png", "sub/blue.png"]
    assert {key: r["reason"] for key, r in rejects.items()} == {
        "sub/red-copy.png": "duplicate",
        "empty.jpg": "empty_file",
        "notes.png": "not_an_image",
        "cut.png": rejects["cut.png"]["reason"],
    }
    assert rejects["cut.png"]["reason"] in {"truncated", "decode_error"}
    assert "red.png" in rejects["sub/red-copy.png"]["detail"]
    assert summary.images + summary.rejected == 6
    for row in rows:
        stored = tmp_path / "pool" / row["path"]
        assert row["path"] == f"files/{row['sha256'][:2]}/{row['sha256']}.png"
        assert sha256_bytes(stored.read_bytes()) == row["sha256"]


def test_missing_folder_is_a_clear_error_and_leaves_no_pool(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_pool(_folder_config(tmp_path / "nowhere"), tmp_path / "pool")
    assert not (tmp_path / "pool").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp_")]


def test_tar_shard_pool_keeps_sidecar_metadata(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [
            ("0001.png", _png((0, 255, 0))),
            ("0001.json", b'{"caption": "a green square"}'),
            ("0002.png", b"broken"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    config = ImagesConfig.model_validate(
        {"source": {"kind": "tar", "shards": str(tmp_path / "shard-{000..000}.tar")}}
    )
    summary = build_pool(config, tmp_path / "pool")
    (row,) = _rows(read_manifest(tmp_path / "pool"))
    assert row["image_id"] == "0001"
    assert json.loads(row["metadata"]) == {"caption": "a green square"}
    assert summary.rejects_by_reason == {"not_an_image": 1}


class _Images(BaseHTTPRequestHandler):
    bodies: ClassVar[dict[str, tuple[bytes, str]]] = {
        "/a.png": (_png((1, 2, 3)), "image/png"),
        "/page": (b"<html>", "text/html"),
    }

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body, content_type = self.bodies.get(self.path, (b"", ""))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", content_type or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_pool_reports_every_url(tmp_path: Path, image_server: str) -> None:
    urls = [f"{image_server}/a.png", f"{image_server}/gone.png", f"{image_server}/page"]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    config = ImagesConfig.model_validate(
        {
            "source": {"kind": "urls", "list": str(tmp_path / "urls.parquet"), "retries": 0},
            "limits": {"min_side": 8},
        }
    )
    summary = build_pool(config, tmp_path / "pool")
    (row,) = _rows(read_manifest(tmp_path / "pool"))
    assert json.loads(row["metadata"])["url"] == urls[0]
    assert dict(summary.rejects_by_reason) == {"http_404": 1, "wrong_content_type": 1}
    statuses = _rows(pq.read_table(tmp_path / "pool" / "downloads.parquet"))
    assert [s["status"] for s in statuses] == ["ok", "http_404", "wrong_content_type"]


def test_stage_main_writes_pool_and_metrics(tmp_path: Path, repo_root: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "images:\n  source:\n    kind: scenes\n    image_size: 56\n"
        "    counts: {train: 3, test: 1, test_unseen: 1}\n"
    )
    out, metrics = tmp_path / "data" / "images", tmp_path / "metrics" / "images.json"
    code = images_stage.main(
        ["--params", str(params), "--out", str(out), "--metrics", str(metrics)]
    )
    assert code == 0
    first = metrics.read_bytes()
    assert json.loads(first)["images"] == 5
    # Metrics are a DVC output: a re-run must reproduce them byte for byte (no timings).
    images_stage.main(["--params", str(params), "--out", str(out), "--metrics", str(metrics)])
    assert metrics.read_bytes() == first
    assert (out / MANIFEST).exists()
    assert load_params(params).images.source.counts.train == 3


def test_stage_main_names_the_bad_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("images:\n  source:\n    kind: folder\n    path: x\n    recursive: true\n")
    assert images_stage.main(["--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "images.source.folder.recursive: unknown key" in capsys.readouterr().err


def test_stage_main_reports_a_missing_folder_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"images:\n  source:\n    kind: folder\n    path: {tmp_path / 'absent'}\n")
    assert images_stage.main(["--params", str(params), "--out", str(tmp_path / "o")]) == 2
    assert "absent" in capsys.readouterr().err
