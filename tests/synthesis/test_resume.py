"""Kill a synthesis run mid-way, run it again: no duplicate, no lost image, no repeated call.

The synthesis stage runs in a subprocess against a local OpenAI-compatible server (the only
fake: it stands in for a remote MLLM endpoint). It is killed with SIGKILL after a few answers;
the re-run must finish every image, and the server must see no request for an image whose
answer was already cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from muco.config import ImagesConfig
from muco.images.pool import build_pool
from muco.records import read_records
from muco.stages import synthesize as synthesize_stage
from muco.synthesis.prompts import TURN_KINDS

IMAGES = 24
ANSWER = json.dumps(
    {
        "description": "Shapes on a plain background.",
        "turns": [
            {
                "type": kind,
                "queries": [
                    f"Question {i} about the picture?",
                    f"Another way to ask {i}?",
                    f"A third phrasing of question {i}?",
                ],
                "answer": f"answer {i}",
                "answer_sentence": f"The answer is {i}.",
                "negative": f"not {i}",
            }
            for i, kind in enumerate(TURN_KINDS)
        ],
    }
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # image digest -> requests


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        digest = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
        with self.server.lock:
            self.server.requests[digest] += 1
        time.sleep(0.1)  # a slow model: the kill lands while requests are in flight
        reply = json.dumps(
            {"choices": [{"message": {"content": ANSWER}, "finish_reason": "stop"}]}
        ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed mid-request: exactly what this test does


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_killed_run_resumes_without_duplicates_losses_or_repeat_calls(
    server: _Server, tmp_path: Path
) -> None:
    pool = tmp_path / "images"
    images = {
        "source": {
            "kind": "scenes",
            "image_size": 56,
            "counts": {"train": IMAGES, "test": 0, "test_unseen": 0},
        }
    }
    build_pool(ImagesConfig.model_validate(images), pool)
    params = tmp_path / "params.yaml"
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    generator = {
        "kind": "openai",
        "endpoints": [endpoint],
        "model": "fake-mllm",
        "concurrency": 2,
        "retries": 0,
        "api_key_env": None,
    }
    params.write_text(yaml.safe_dump({"synthesize": {"generator": generator}}))
    args = [
        "--params",
        str(params),
        "--images",
        str(pool),
        "--out",
        str(tmp_path / "m3t"),
        "--metrics",
        str(tmp_path / "synthesize.json"),
        "--timings",
        str(tmp_path / "timings.json"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]

    process = subprocess.Popen(
        [sys.executable, "-m", "muco.stages.synthesize", *args],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while sum(server.requests.values()) < 8 and process.poll() is None:
        assert time.monotonic() < deadline, "the synthesis run never reached the server"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    cached = {p.stem for p in (tmp_path / "cache").rglob("*.json")}
    assert 0 < len(cached) < IMAGES, "the kill must land mid-way"
    assert not (tmp_path / "m3t").exists(), "a killed run leaves no half-written output"
    requests_before = Counter(server.requests)

    assert synthesize_stage.main(args) == 0
    records = read_records(tmp_path / "m3t")
    manifest = pq.read_table(pool / "manifest.parquet").to_pylist()
    assert records.num_rows == IMAGES
    assert sorted(records["image_sha256"].to_pylist()) == sorted(r["sha256"] for r in manifest)
    assert len(set(records["record_id"].to_pylist())) == IMAGES

    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["from_cache"] == len(cached)
    assert timings["generated"] == IMAGES - len(cached)
    # Images answered before the kill were cached: the re-run asked the server nothing about
    # them. Every other image was asked exactly once more.
    new_requests = server.requests - requests_before
    image_digests = {r["sha256"] for r in manifest}
    assert sum(new_requests.values()) == IMAGES - len(cached)
    assert set(new_requests) <= image_digests
    assert all(count == 1 for count in new_requests.values())
