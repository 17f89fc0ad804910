"""URL-list ingest against a local HTTP server on 127.0.0.1 that misbehaves in every usual way."""

from __future__ import annotations

import csv
import hashlib
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from muco.images.urls import (
    DownloadSettings,
    UrlItem,
    UrlStatus,
    download_urls,
    read_url_list,
    write_status_report,
)

IMAGE = b"\x89PNG\r\n\x1a\n" + b"pretend image body" * 10
MAX_BYTES = 1000
SLOW_S = 2.0
SETTINGS = DownloadSettings(
    concurrency=4, timeout_s=0.5, retries=2, backoff_s=0.01, max_bytes=MAX_BYTES
)


@dataclass
class ServerState:
    """What the handler has seen; shared by all handler threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    user_agents: set[str] = field(default_factory=set)


class Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a subclass per server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def send(
        self, code: int, body: bytes = b"", content_type: str = "image/png", **headers: str
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.state.lock:
            self.state.hits[path] += 1
            hits = self.state.hits[path]
            self.state.user_agents.add(self.headers.get("User-Agent", ""))
        if path == "/image.png":
            self.send(200, IMAGE)
        elif path == "/missing":
            self.send(404, b"gone", "text/plain")
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            self.send(302, Location="/image.png" if left == 0 else f"/hop/{left - 1}")
        elif path == "/loop":
            self.send(302, Location="/loop")
        elif path == "/slow":
            time.sleep(SLOW_S)
            self.send(200, IMAGE)
        elif path == "/page.html":
            self.send(200, b"<html></html>", "text/html; charset=utf-8")
        elif path == "/flaky":
            self.send(503, b"busy", "text/plain") if hits == 1 else self.send(200, IMAGE)
        elif path == "/limited":
            if hits == 1:
                self.send(429, b"slow down", "text/plain", Retry_After="0")
            else:
                self.send(200, IMAGE, "application/octet-stream")
        elif path == "/big":
            self.send(200, b"x" * (MAX_BYTES + 1))
        elif path == "/big-unannounced":
            self.send_response(200)  # no Content-Length: the body ends when the connection does
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(b"x" * (MAX_BYTES * 3))
        elif path == "/busy":
            self.send(503, b"busy", "text/plain")
        elif path == "/concurrent":
            with self.state.lock:
                self.state.in_flight += 1
                self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)
            time.sleep(0.1)
            with self.state.lock:
                self.state.in_flight -= 1
            self.send(200, IMAGE)
        else:
            self.send(500, b"unknown test path", "text/plain")


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up on the slow and oversized answers on purpose; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


Server = tuple[str, ServerState]


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(
    items: list[UrlItem], settings: DownloadSettings = SETTINGS
) -> tuple[list[UrlStatus], list[tuple[str, bytes, UrlStatus]]]:
    received: list[tuple[str, bytes, UrlStatus]] = []
    statuses = download_urls(
        items, settings, lambda item, data, status: received.append((item.key, data, status))
    )
    return statuses, received


def test_every_failure_mode_gets_one_status_in_input_order(server: Server) -> None:
    base, state = server
    cases = {
        "image": ("/image.png", "ok", 200, 1),
        "missing": ("/missing", "http_404", 404, 1),
        "redirected": ("/hop/3", "ok", 200, 1),
        "loop": ("/loop", "too_many_redirects", None, 1),
        "slow": ("/slow", "timeout", None, 3),
        "html": ("/page.html", "wrong_content_type", 200, 1),
        "flaky": ("/flaky", "ok", 200, 2),
        "limited": ("/limited", "ok", 200, 2),
        "big": ("/big", "too_large", 200, 1),
        "big-unannounced": ("/big-unannounced", "too_large", 200, 1),
        "busy": ("/busy", "http_503", 503, 3),
    }
    items = [UrlItem(key, base + path) for key, (path, *_) in cases.items()]
    items += [
        UrlItem("refused", f"http://127.0.0.1:{closed_port()}/x.png"),
        UrlItem("ftp", "ftp://127.0.0.1/x.png"),
        UrlItem("blank", "", origin="urls.csv:row 9"),
    ]
    started = time.monotonic()
    statuses, received = run(items)
    assert time.monotonic() - started < 10

    assert [status.key for status in statuses] == [item.key for item in items]
    outcome = {s.key: (s.status, s.http_status, s.attempts) for s in statuses}
    for key, (_, status, http_status, attempts) in cases.items():
        assert outcome[key] == (status, http_status, attempts), key
    assert outcome["refused"] == ("connection_error", None, 3)
    assert outcome["ftp"] == ("invalid_url", None, 0)
    assert outcome["blank"] == ("invalid_url", None, 0)

    by_key = {status.key: status for status in statuses}
    assert by_key["redirected"].final_url == base + "/image.png"
    assert by_key["image"].bytes == len(IMAGE)
    assert by_key["image"].content_type == "image/png"
    assert by_key["image"].error == ""
    assert "urls.csv:row 9" in by_key["blank"].error
    assert "404" in by_key["missing"].error and "/missing" in by_key["missing"].error
    assert by_key["big"].bytes == 0  # refused from Content-Length, body never read
    assert MAX_BYTES < by_key["big-unannounced"].bytes <= 3 * MAX_BYTES
    assert all(s.status != "ok" or s.error == "" for s in statuses)

    ok_keys = [key for key, (_, status, *_) in cases.items() if status == "ok"]
    assert sorted(key for key, _, _ in received) == sorted(ok_keys)
    assert all(data == IMAGE and status.status == "ok" for _, data, status in received)
    # Non-retryable answers were asked for once; the wrong content type was not retried.
    assert state.hits["/missing"] == 1 and state.hits["/page.html"] == 1
    assert state.user_agents == {SETTINGS.user_agent}


def test_concurrency_is_bounded(server: Server) -> None:
    base, state = server
    items = [UrlItem(f"k{i}", f"{base}/concurrent?i={i}") for i in range(8)]
    statuses, received = run(items, DownloadSettings(concurrency=2, timeout_s=5, backoff_s=0.01))
    assert [status.status for status in statuses] == ["ok"] * 8
    assert len(received) == 8
    assert state.max_in_flight == 2


def test_no_items_no_statuses() -> None:
    assert run([]) == ([], [])


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        DownloadSettings(concurrency=0)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_status_report_round_trips(tmp_path: Path, suffix: str) -> None:
    statuses = [
        UrlStatus("a", "http://x/a", "ok", 200, 1, 10, "http://x/a", "image/png", 0.1, ""),
        UrlStatus("b", "", "invalid_url", None, 0, 0, "", "", 0.0, "blank URL"),
    ]
    path = tmp_path / "reports" / f"downloads{suffix}"
    write_status_report(statuses, path)
    table = pq.read_table(path) if suffix == ".parquet" else pa_csv.read_csv(path)
    assert table.column("key").to_pylist() == ["a", "b"]
    assert table.column("http_status").to_pylist() == [200, None]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_status_report_of_nothing_still_has_columns(tmp_path: Path) -> None:
    write_status_report([], tmp_path / "empty.parquet")
    assert "status" in pq.read_table(tmp_path / "empty.parquet").column_names


# --------------------------------------------------------------------------- URL lists


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_read_csv_collapses_duplicates_and_keeps_blank_urls(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "urls.csv",
        ["url", "caption"],
        [
            ["http://a/1.jpg", "one"],
            [" http://a/1.jpg ", "again"],
            ["", "none"],
            ["http://a/2", ""],
        ],
    )
    items = read_url_list(path)
    assert [item.url for item in items] == ["http://a/1.jpg", "", "http://a/2"]
    assert items[0].key == hashlib.sha256(b"http://a/1.jpg").hexdigest()[:16]
    assert items[1].key == "row-3"
    assert items[1].origin == f"{path}:row 3"
    assert read_url_list(path) == items  # deterministic keys


def test_read_parquet_with_key_column(tmp_path: Path) -> None:
    path = tmp_path / "urls.parquet"
    table = pa.table({"link": ["http://a/1", None, "http://a/1"], "id": [7, 8, 9]})
    pq.write_table(table, path)
    items = read_url_list(path, url_column="link", key_column="id")
    assert [(item.key, item.url) for item in items] == [("7", "http://a/1"), ("8", "")]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_column_names_file_and_column(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"list{suffix}"
    if suffix == ".csv":
        write_csv(path, ["link"], [["http://a/1"]])
    else:
        pq.write_table(pa.table({"link": ["http://a/1"]}), path)
    with pytest.raises(ValueError, match=r"list\.\w+: no column 'url' \(columns: 'link'\)"):
        read_url_list(path)


def test_read_url_list_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        read_url_list(tmp_path / "nope.csv")
    other = tmp_path / "urls.txt"
    other.write_text("http://a/1\n")
    with pytest.raises(ValueError, match=r"urls\.txt"):
        read_url_list(other)
    repeated = write_csv(
        tmp_path / "k.csv", ["url", "id"], [["http://a/1", "x"], ["http://a/2", "x"]]
    )
    with pytest.raises(ValueError, match="key 'x' repeats in rows 1 and 2"):
        read_url_list(repeated, key_column="id")
