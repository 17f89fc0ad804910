"""Image-source fingerprints change with content, not with names' timestamps."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from muco.config import FolderSource, ScenesSource, TarSource, UrlListSource
from muco.images.fingerprint import source_fingerprint


def test_folder_fingerprint_follows_content(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"one")
    (folder / "notes.txt").write_bytes(b"not an image")
    source = FolderSource(kind="folder", path=Path("images"))
    first = source_fingerprint(source, tmp_path)
    (folder / "a.png").touch()
    (folder / "notes.txt").write_bytes(b"other text")
    assert source_fingerprint(source, tmp_path) == first
    (folder / "a.png").write_bytes(b"two")
    changed = source_fingerprint(source, tmp_path)
    assert changed != first
    (folder / "sub").mkdir()
    (folder / "sub" / "b.jpg").write_bytes(b"three")
    assert source_fingerprint(source, tmp_path) not in {first, changed}
    # The whole source moved elsewhere: the same content.
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert source_fingerprint(FolderSource(kind="folder", path=moved)) == source_fingerprint(
        FolderSource(kind="folder", path=Path("moved")), tmp_path
    )


def test_tar_and_url_sources_hash_their_files(tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w"):
        pass
    tar = TarSource(kind="tar", shards="shard-{000..000}.tar")
    first = source_fingerprint(tar, tmp_path)
    with tarfile.open(shard, "w") as archive:
        archive.add(__file__, arcname="x.txt")
    assert source_fingerprint(tar, tmp_path) != first

    urls = tmp_path / "urls.csv"
    urls.write_text("url\nhttp://example.org/a.png\n")
    source = UrlListSource(kind="urls", list=Path("urls.csv"))
    before = source_fingerprint(source, tmp_path)
    urls.write_text("url\nhttp://example.org/a.png\nhttp://example.org/b.png\n")
    assert source_fingerprint(source, tmp_path) != before


def test_scenes_are_fingerprinted_by_their_parameters() -> None:
    assert source_fingerprint(ScenesSource()) == source_fingerprint(ScenesSource())
    assert source_fingerprint(ScenesSource()) != source_fingerprint(ScenesSource(seed=1))


def test_missing_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="gone"):
        source_fingerprint(FolderSource(kind="folder", path=Path("gone")), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"list\.csv"):
        source_fingerprint(UrlListSource(kind="urls", list=Path("list.csv")), tmp_path)
