"""The OpenAI-compatible generator against a fake chat-completions server on 127.0.0.1.

The server tells the test images apart by the SHA-256 of the image bytes inside the request's
data URL, and misbehaves per image in the ways a real server or proxy does.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from muco.config import OpenAIGenerator, SamplingConfig
from muco.synthesis.content import M3TContent
from muco.synthesis.generators.base import Outcome, Rejection, SynthesisInput
from muco.synthesis.generators.openai_client import OpenAIChatGenerator
from muco.synthesis.parsing import ParseRejection, parse_response
from muco.synthesis.prompts import (
    SYSTEM_PROMPT,
    TURN_KINDS,
    build_prompt,
    response_json_schema,
)

KEY_ENV = "MUCO_TEST_OPENAI_KEY"
SECRET = "sk-test-5ecret-do-not-leak"
TIMEOUT_S = 0.4
SLOW_S = 0.05
KINDS = TURN_KINDS


def valid_answer(paraphrases: int = 3) -> str:
    turns = [
        {
            "type": kind,
            "queries": [
                f"Paraphrase {j} of question {i} about this image?" for j in range(paraphrases)
            ],
            "answer": f"answer {i}",
            "answer_sentence": f"The answer to question {i} is answer {i}.",
            "negative": f"wrong answer {i}",
        }
        for i, kind in enumerate(KINDS)
    ]
    return json.dumps({"description": "A red cube on a wooden table.", "turns": turns})


VALID = valid_answer()
MALFORMED = '{"description": "A red cube", "turns": [oops]}'
TRUNCATED = VALID[: len(VALID) // 2]


def completion(content: object, finish_reason: str = "stop") -> bytes:
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    return json.dumps({"object": "chat.completion", "choices": [choice]}).encode()


@dataclass
class ServerState:
    """What the fake server has seen, keyed by image hash; shared by all handler threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    behaviours: dict[str, str] = field(default_factory=dict)
    paths: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    bodies: list[dict] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def attempts(self, key: str) -> int:
        return len(self.paths[key])


class Handler(BaseHTTPRequestHandler):
    state: ServerState  # set on a subclass per server
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        state = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data_url = body["messages"][1]["content"][0]["image_url"]["url"]
        key = hashlib.sha256(base64.b64decode(data_url.split(",", 1)[1])).hexdigest()
        behaviour = state.behaviours.get(key, "ok")
        with state.lock:
            state.paths[key].append(self.path)
            state.bodies.append(body)
            state.authorizations.append(self.headers.get("Authorization"))
            attempt = state.attempts(key)
            # The client abandons a timed-out request long before this handler finishes it,
            # so that one does not count as in flight.
            counted = not (behaviour == "timeout_once" and attempt == 1)
            state.in_flight += counted
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self.behave(behaviour, attempt)
        finally:
            with state.lock:
                state.in_flight -= counted

    def behave(self, behaviour: str, attempt: int) -> None:
        first = attempt == 1
        if behaviour == "slow":
            time.sleep(SLOW_S)
        elif behaviour == "429_once" and first:
            return self.send(429, b'{"error": "slow down"}', **{"Retry-After": "0"})
        elif behaviour == "500_once" and first:
            return self.send(500, b'{"error": "oops"}')
        elif behaviour == "503_always":
            return self.send(503, b'{"error": "overloaded"}')
        elif behaviour == "timeout_once" and first:
            time.sleep(TIMEOUT_S + 0.3)
        elif behaviour == "400":
            return self.send(400, b'{"error": {"message": "max_tokens is too large"}}')
        elif behaviour == "401_echo_key":
            echo = json.dumps({"error": f"rejected {self.headers.get('Authorization')}"})
            return self.send(401, echo.encode())
        elif behaviour == "malformed_json":
            return self.send(200, completion(MALFORMED))
        elif behaviour == "truncated_json":
            return self.send(200, completion(TRUNCATED))
        elif behaviour == "length":
            return self.send(200, completion(TRUNCATED, finish_reason="length"))
        elif behaviour == "html_body":
            return self.send(200, b"<html>proxy error</html>", "text/html")
        elif behaviour == "no_choices":
            return self.send(200, b'{"object": "error", "message": "no"}')
        elif behaviour == "null_content":
            return self.send(200, completion(None))
        self.send(200, completion(VALID))

    def send(
        self, code: int, body: bytes, content_type: str = "application/json", **headers: str
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up on a timed-out request is expected


@dataclass
class Server:
    base: str
    state: ServerState


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def make_config(endpoints: tuple[str, ...], **overrides: object) -> OpenAIGenerator:
    settings: dict[str, object] = {
        "kind": "openai",
        "endpoints": endpoints,
        "model": "fake-qwen2-vl",
        "api_key_env": KEY_ENV,
        "concurrency": 4,
        "timeout_s": TIMEOUT_S,
        "retries": 2,
        "response_format": "json_object",
        "sampling": SamplingConfig(temperature=0.3, top_p=0.8, max_new_tokens=900, seed=11),
    }
    settings.update(overrides)
    return OpenAIGenerator.model_validate(settings)


def make_image(path: Path, index: int, fmt: str = "PNG") -> SynthesisInput:
    """A tiny image whose bytes differ from every other index's."""
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (index % 256, index // 256, 7)).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    return SynthesisInput(image_id=path.stem, sha256=digest, path=path)


def run(generator: OpenAIChatGenerator, inputs: list[SynthesisInput]) -> dict[str, Outcome]:
    """Every outcome by image id; fails if an image gets two results."""
    results: dict[str, Outcome] = {}

    def on_result(item: SynthesisInput, outcome: Outcome) -> None:
        assert item.image_id not in results, f"{item.image_id} got a second result"
        results[item.image_id] = outcome

    generator.generate(inputs, on_result)
    return results


def parse_reason(content: str) -> str:
    """The rejection code the parser gives ``content``."""
    with pytest.raises(ParseRejection) as caught:
        parse_response(content, 7, 3)
    return caught.value.reason


def test_every_image_gets_one_result_with_the_expected_reason(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    # behaviour -> (reason or None for content, cacheable, attempts the server sees)
    expected: dict[str, tuple[str | None, bool, int]] = {
        "ok": (None, True, 1),
        "429_once": (None, True, 2),
        "500_once": (None, True, 2),
        "timeout_once": (None, True, 2),
        "503_always": ("http_503", False, 3),
        "400": ("http_400", False, 1),
        "401_echo_key": ("http_401", False, 1),
        "malformed_json": (parse_reason(MALFORMED), True, 1),
        "truncated_json": (parse_reason(TRUNCATED), True, 1),
        "length": ("truncated_output", True, 1),
        "html_body": ("bad_response", False, 1),
        "no_choices": ("bad_response", False, 1),
        "null_content": ("bad_response", False, 1),
    }
    behaviour_of: dict[str, str] = {}
    inputs = []
    for index, behaviour in enumerate([*expected, *["slow"] * 12]):
        item = make_image(tmp_path / f"img{index:03d}.png", index)
        server.state.behaviours[item.sha256] = behaviour
        behaviour_of[item.image_id] = behaviour
        inputs.append(item)
    endpoints = (f"{server.base}/a/v1", f"{server.base}/b/v1/")
    generator = OpenAIChatGenerator(make_config(endpoints), backoff_s=0.01)

    results = run(generator, inputs)

    assert sorted(results) == sorted(item.image_id for item in inputs)
    for item in inputs:
        behaviour = behaviour_of[item.image_id]
        reason, cacheable, attempts = expected.get(behaviour, (None, True, 1))
        outcome = results[item.image_id]
        if reason is None:
            assert isinstance(outcome, M3TContent), (behaviour, outcome)
            assert outcome.turns == 7
        else:
            assert isinstance(outcome, Rejection), (behaviour, outcome)
            assert (outcome.reason, outcome.cacheable) == (reason, cacheable), behaviour
            assert SECRET not in outcome.detail
        assert server.state.attempts(item.sha256) == attempts, behaviour
    # Both endpoints served, and a retry went to the other endpoint than the failed attempt.
    all_paths = [path for paths in server.state.paths.values() for path in paths]
    assert set(all_paths) == {"/a/v1/chat/completions", "/b/v1/chat/completions"}
    for item in inputs:
        paths = server.state.paths[item.sha256]
        assert all(before != after for before, after in itertools.pairwise(paths))
    assert 2 <= server.state.max_in_flight <= 4
    assert set(server.state.authorizations) == {f"Bearer {SECRET}"}
    echoed = next(
        r for r in results.values() if isinstance(r, Rejection) and r.reason == "http_401"
    )
    assert "rejected" in echoed.detail  # the server's message is kept, the key scrubbed


@pytest.mark.parametrize("response_format", ["none", "json_object", "guided_json"])
def test_request_carries_model_image_prompt_sampling_and_format(
    server: Server, tmp_path: Path, response_format: str
) -> None:
    item = make_image(tmp_path / "one.png", 1)
    config = make_config((f"{server.base}/v1",), response_format=response_format)

    results = run(OpenAIChatGenerator(config, turns=7, paraphrases=3), [item])

    assert isinstance(results["one"], M3TContent)
    (body,) = server.state.bodies
    assert body["model"] == "fake-qwen2-vl"
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    image_part, text_part = user["content"]
    assert user["role"] == "user"
    assert image_part["type"] == "image_url"
    prefix, data = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(data) == item.path.read_bytes()
    assert text_part == {"type": "text", "text": build_prompt(7, 3)}
    sampling = {name: body[name] for name in ("temperature", "top_p", "max_tokens", "seed")}
    assert sampling == {"temperature": 0.3, "top_p": 0.8, "max_tokens": 900, "seed": 11}
    schema = response_json_schema(7, 3)
    formats = {
        "none": {},
        "json_object": {"response_format": {"type": "json_object"}},
        "guided_json": {
            "guided_json": schema,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "m3t", "schema": schema},
            },
        },
    }
    format_fields = {k: body[k] for k in ("response_format", "guided_json") if k in body}
    assert format_fields == formats[response_format]


@pytest.mark.parametrize(
    ("fmt", "mime"), [("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")]
)
def test_mime_type_comes_from_the_image_bytes(
    server: Server, tmp_path: Path, fmt: str, mime: str
) -> None:
    # A misleading suffix: the bytes decide.
    item = make_image(tmp_path / "picture.png", 3, fmt=fmt)
    run(OpenAIChatGenerator(make_config((f"{server.base}/v1",))), [item])
    (body,) = server.state.bodies
    assert body["messages"][1]["content"][0]["image_url"]["url"].startswith(f"data:{mime};base64,")


def test_unreadable_images_are_cacheable_rejections_without_a_request(
    server: Server, tmp_path: Path
) -> None:
    (tmp_path / "text.png").write_text("not an image")
    missing = SynthesisInput(image_id="missing", sha256="0" * 64, path=tmp_path / "missing.png")
    garbage = SynthesisInput(image_id="text", sha256="1" * 64, path=tmp_path / "text.png")

    results = run(OpenAIChatGenerator(make_config((f"{server.base}/v1",))), [missing, garbage])

    for image_id in ("missing", "text"):
        outcome = results[image_id]
        assert isinstance(outcome, Rejection)
        assert (outcome.reason, outcome.cacheable) == ("unreadable_image", True)
    assert "missing.png" in results["missing"].detail
    assert server.state.bodies == []


@pytest.mark.parametrize("api_key_env", [KEY_ENV, None])
def test_no_authorization_header_without_a_key(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_key_env: str | None
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = make_config((f"{server.base}/v1",), api_key_env=api_key_env)
    run(OpenAIChatGenerator(config), [make_image(tmp_path / "a.png", 1)])
    assert server.state.authorizations == [None]


def test_unreachable_endpoint_is_a_transient_connection_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = make_config((f"http://127.0.0.1:{port}/v1",), retries=1)
    results = run(OpenAIChatGenerator(config, backoff_s=0.01), [make_image(tmp_path / "a.png", 1)])
    outcome = results["a"]
    assert isinstance(outcome, Rejection)
    assert (outcome.reason, outcome.cacheable) == ("connection_error", False)


def test_retry_after_wins_over_the_backoff(server: Server, tmp_path: Path) -> None:
    item = make_image(tmp_path / "a.png", 1)
    server.state.behaviours[item.sha256] = "429_once"
    generator = OpenAIChatGenerator(make_config((f"{server.base}/v1",)), backoff_s=60.0)
    started = time.monotonic()
    results = run(generator, [item])
    assert time.monotonic() - started < 10  # Retry-After: 0, not a minute of backoff
    assert isinstance(results["a"], M3TContent)
    assert server.state.attempts(item.sha256) == 2


def test_concurrency_is_bounded_and_used(server: Server, tmp_path: Path) -> None:
    inputs = [make_image(tmp_path / f"img{i}.png", i) for i in range(20)]
    for item in inputs:
        server.state.behaviours[item.sha256] = "slow"
    config = make_config((f"{server.base}/v1",), concurrency=3)
    results = run(OpenAIChatGenerator(config), inputs)
    assert len(results) == 20
    assert server.state.max_in_flight == 3


def test_an_exception_in_on_result_stops_the_run(server: Server, tmp_path: Path) -> None:
    inputs = [make_image(tmp_path / f"img{i}.png", i) for i in range(12)]
    calls = []

    def on_result(item: SynthesisInput, outcome: Outcome) -> None:
        calls.append(item.image_id)
        raise RuntimeError("disk full")

    generator = OpenAIChatGenerator(make_config((f"{server.base}/v1",)))
    with pytest.raises(RuntimeError, match="disk full"):
        generator.generate(inputs, on_result)
    assert len(calls) == 1
    assert len(server.state.bodies) < 12


def test_progress_bar_counts_rejections(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    item = make_image(tmp_path / "a.png", 1)
    server.state.behaviours[item.sha256] = "400"
    generator = OpenAIChatGenerator(make_config((f"{server.base}/v1",)), progress=True)
    run(generator, [item, make_image(tmp_path / "b.png", 2)])
    assert "http_400=1" in capsys.readouterr().err


def test_identity_names_model_prompt_and_sampling_but_no_endpoint_or_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    generator = OpenAIChatGenerator(make_config(("http://127.0.0.1:9/v1",)), paraphrases=2)
    identity = generator.identity()
    assert identity == {
        "generator": "openai",
        "model": "fake-qwen2-vl",
        "prompt_version": "m3t-v1",
        "sampling": {
            "temperature": 0.3,
            "top_p": 0.8,
            "max_new_tokens": 900,
            "seed": 11,
            "response_format": "json_object",
            "turns": 7,
            "paraphrases": 2,
        },
    }
    assert "127.0.0.1" not in json.dumps(identity)
    other = OpenAIChatGenerator(make_config(("http://10.0.0.1:8000/v1", "http://10.0.0.2/v1")))
    assert (
        other.identity() == OpenAIChatGenerator(make_config(("http://127.0.0.1:9/v1",))).identity()
    )


def test_no_inputs_no_requests() -> None:
    generator = OpenAIChatGenerator(make_config(("http://127.0.0.1:9/v1",)))
    generator.generate([], lambda item, outcome: pytest.fail("no input, no result"))


def test_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OpenAIChatGenerator(make_config(("ftp://example.org/v1",)))


def test_a_given_transport_serves_every_worker(tmp_path: Path) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=completion(VALID))

    config = make_config(("http://model.invalid/v1",), concurrency=3)
    generator = OpenAIChatGenerator(config, transport=httpx.MockTransport(answer))
    results = run(generator, [make_image(tmp_path / f"img{i}.png", i) for i in range(7)])
    assert all(isinstance(outcome, M3TContent) for outcome in results.values())
    assert seen == ["http://model.invalid/v1/chat/completions"] * 7
