"""Folder and tar-shard sources: order, keys, skipped and rejected entries, corrupt shards."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from muco.images.sources import (
    RawImage,
    SourceFailure,
    SourceReason,
    expand_shards,
    iter_folder,
    iter_tar_shards,
)


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def summary(items: list[RawImage | SourceFailure]) -> list[tuple[str, str]]:
    return [(item.key, item.reason if isinstance(item, SourceFailure) else "ok") for item in items]


# --------------------------------------------------------------------------- folders


def test_folder_is_sorted_recursive_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    for name in ["b.png", "a/z.JPG", "a/y/x.webp", "a.gif", "notes.txt", ".hidden.png"]:
        write(root / name, name.encode())
    write(root / ".cache" / "c.png")
    items = list(iter_folder(root))
    assert [item.key for item in items] == ["a/y/x.webp", "a/z.JPG", "a.gif", "b.png"]
    first = items[0]
    assert isinstance(first, RawImage)
    assert first.data == b"a/y/x.webp"
    assert first.origin == str(root / "a" / "y" / "x.webp")
    assert items[1].suffix == ".jpg"  # type: ignore[union-attr]
    assert first.metadata == {}


def test_folder_extensions_filter(tmp_path: Path) -> None:
    write(tmp_path / "a.png")
    write(tmp_path / "b.jpg")
    assert [item.key for item in iter_folder(tmp_path, ["PNG"])] == ["a.png"]


def test_folder_symlinks_may_not_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = write(tmp_path / "secret" / "s.png")
    inside = write(root / "real" / "r.png", b"inside")
    (root / "escape.png").symlink_to(outside)
    (root / "escape_dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "alias.png").symlink_to(inside)
    (root / "real" / "loop").symlink_to(root / "real", target_is_directory=True)
    items = list(iter_folder(root))
    assert summary(items) == [
        ("alias.png", "ok"),
        ("escape.png", SourceReason.OUTSIDE_ROOT),
        ("escape_dir", SourceReason.OUTSIDE_ROOT),
        ("real/loop", SourceReason.SYMLINK_LOOP),
        ("real/r.png", "ok"),
    ]
    assert items[0].data == b"inside"  # type: ignore[union-attr]
    assert str(outside) in items[1].detail  # type: ignore[union-attr]


def test_folder_broken_link_and_oversized_file_are_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    write(tmp_path / "huge.png", b"x" * 100)
    write(tmp_path / "ok.png", b"x" * 10)
    assert summary(list(iter_folder(tmp_path, max_bytes=50))) == [
        ("broken.png", SourceReason.UNREADABLE),
        ("huge.png", SourceReason.TOO_MANY_BYTES),
        ("ok.png", "ok"),
    ]


def test_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_folder(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- tar shards


def test_tar_samples_group_members_and_read_sidecars(tmp_path: Path) -> None:
    shard = tmp_path / "data-000.tar"
    make_tar(
        shard,
        [
            ("000123.png", b"png"),
            ("000123.jpg", b"jpg"),  # preferred over .png by IMAGE_EXTENSIONS order
            ("000123.json", b'{"caption": "a red cube", "width": 3}'),
            ("./000124.webp", b"webp"),
            ("000124.txt", "un cube rougé".encode()),
            ("sub/000125.gif", b"gif"),
            ("sub/000125.cls", b"3"),
        ],
    )
    items = list(iter_tar_shards([shard]))
    assert all(isinstance(item, RawImage) for item in items)
    first, second, third = items
    assert (first.key, first.data, first.suffix) == ("000123", b"jpg", ".jpg")  # type: ignore[union-attr]
    assert first.origin == f"{shard}:000123.jpg"
    assert first.metadata == {"caption": "a red cube", "width": 3}  # type: ignore[union-attr]
    assert (second.key, second.metadata) == ("000124", {"txt": "un cube rougé"})  # type: ignore[union-attr]
    assert (third.key, third.metadata) == ("sub/000125", {})  # type: ignore[union-attr]


def test_tar_bad_members_are_failures(tmp_path: Path) -> None:
    shard = tmp_path / "bad.tar"
    make_tar(
        shard,
        [
            ("../evil.jpg", b"x"),
            ("/etc/abs.jpg", b"x"),
            ("001.json", b"{}"),
            ("002.jpg", b"x"),
            ("002.json", b"{not json"),
            ("003.jpg", b"x"),
            ("003.json", b"[1, 2]"),
            ("004.jpg", b"x" * 100),
            ("005.jpg", b"x"),
            ("006.jpg", b"x"),
            ("005.txt", b"late"),
        ],
    )
    items = list(iter_tar_shards([shard], max_bytes=50))
    assert summary(items) == [
        ("../evil.jpg", SourceReason.UNSAFE_MEMBER_NAME),
        ("/etc/abs.jpg", SourceReason.UNSAFE_MEMBER_NAME),
        ("001", SourceReason.MISSING_IMAGE),
        ("002", SourceReason.BAD_SIDECAR),
        ("003", SourceReason.BAD_SIDECAR),
        ("004", SourceReason.TOO_MANY_BYTES),
        ("005", "ok"),
        ("006", "ok"),
        ("005", SourceReason.DUPLICATE_KEY),
    ]
    assert all(str(shard) in item.detail for item in items if isinstance(item, SourceFailure))


def test_tar_link_members_are_not_followed(tmp_path: Path) -> None:
    shard = tmp_path / "links.tar"
    with tarfile.open(shard, "w") as archive:
        link = tarfile.TarInfo("000.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    assert summary(list(iter_tar_shards([shard]))) == [("000.jpg", SourceReason.UNSUPPORTED_MEMBER)]


@pytest.mark.parametrize("cut", [700, 1024, 2048 + 100])
def test_truncated_shard_is_reported_and_next_shard_still_read(tmp_path: Path, cut: int) -> None:
    # Members: header at 0, data 512..1024; header 1024, data 1536..2048; then the end marker.
    # The cuts land inside data, at a member boundary and inside the end marker; tarfile itself
    # only notices the first and silently stops early at the other two.
    members = [("000.jpg", b"a" * 500), ("001.jpg", b"b" * 500)]
    bad, good = tmp_path / "a-000.tar", tmp_path / "a-001.tar"
    bad.write_bytes(make_tar(bad, members)[:cut])
    make_tar(good, [("100.jpg", b"c")])
    items = list(iter_tar_shards([bad, good]))
    failure = items[-2]
    assert isinstance(failure, SourceFailure)
    assert failure.reason == SourceReason.CORRUPT_SHARD
    assert failure.key == "a-000.tar"
    assert str(bad) in failure.detail
    assert summary(items[-1:]) == [("100", "ok")]
    assert all(isinstance(item, RawImage) for item in items[:-2])


def test_garbage_between_members_is_corrupt(tmp_path: Path) -> None:
    shard = tmp_path / "garbled.tar"
    data = bytearray(make_tar(shard, [("000.jpg", b"a"), ("001.jpg", b"b")]))
    data[1024:1034] = b"!" * 10  # second header's name: its checksum no longer matches
    shard.write_bytes(bytes(data))
    assert summary(list(iter_tar_shards([shard]))) == [("garbled.tar", SourceReason.CORRUPT_SHARD)]


def test_gzip_shards_are_read_and_their_truncation_detected(tmp_path: Path) -> None:
    plain = make_tar(tmp_path / "plain.tar", [("000.jpg", b"a" * 3000), ("001.jpg", b"b")])
    compressed = gzip.compress(plain)
    good, cut = tmp_path / "good.tar.gz", tmp_path / "cut.tar.gz"
    good.write_bytes(compressed)
    cut.write_bytes(compressed[:-4])  # only the checksum trailer is missing
    assert summary(list(iter_tar_shards([good]))) == [("000", "ok"), ("001", "ok")]
    assert summary(list(iter_tar_shards([cut])))[-1] == ("cut.tar.gz", SourceReason.CORRUPT_SHARD)


def test_missing_and_empty_shards_are_failures(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.tar", b"")
    assert summary(list(iter_tar_shards([tmp_path / "gone.tar", empty]))) == [
        ("gone.tar", SourceReason.MISSING_SHARD),
        ("empty.tar", SourceReason.CORRUPT_SHARD),
    ]


def test_expand_shards_braces_and_globs(tmp_path: Path) -> None:
    assert expand_shards("data-{000..002}.tar") == [
        Path("data-000.tar"),
        Path("data-001.tar"),
        Path("data-002.tar"),
    ]
    assert expand_shards("{train,val}-{8..10}.tar") == [
        Path(f"{split}-{number}.tar") for split in ("train", "val") for number in (8, 9, 10)
    ]
    for name in ["s-2.tar", "s-1.tar", "other.tar"]:
        write(tmp_path / name)
    assert expand_shards(os.path.join(tmp_path, "s-*.tar")) == [
        tmp_path / "s-1.tar",
        tmp_path / "s-2.tar",
    ]


@pytest.mark.parametrize(
    ("pattern", "error"),
    [("a-{1}.tar", ValueError), ("a-{1..2.tar", ValueError), ("nothing-*.tar", FileNotFoundError)],
)
def test_expand_shards_errors_name_the_pattern(pattern: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"a-|nothing-"):
        expand_shards(pattern)
