"""M3T content from any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted APIs).

Each image goes out as one ``POST {endpoint}/chat/completions`` request: the system prompt, then a
user message holding the image as a base64 data URL and the M3T prompt. A fixed pool of
``concurrency`` workers keeps that many requests in flight; the endpoints take requests in
rotation, and a retry goes to the next endpoint.

Failures become :class:`Rejection` codes; ``cacheable`` says whether a re-run should try again:

============================  =========  ==================================================
reason                        cacheable  why
============================  =========  ==================================================
``unreadable_image``          yes        the image bytes are what they are
``http_429``, ``http_5xx``    no         server overload or outage, after all retries
``timeout``                   no         transient, after all retries
``connection_error``          no         transient, after all retries
``http_4xx`` (other)          no         the request is wrong (model name, key, limits);
                                         a fixed config must be able to try again. Not
                                         retried within the run: it would fail the same way.
``bad_response``              no         a 2xx body that is not a chat completion (a proxy's
                                         error page, a refusal without content) says nothing
                                         about what the model answers for this image
``truncated_output``          yes        ``finish_reason == "length"``: the same prompt and
                                         seed would run out of tokens again
parse codes                   yes        from :mod:`muco.synthesis.parsing`: a malformed answer
                                         to a fixed prompt and seed is cached like a success
============================  =========  ==================================================

The API key, read from the environment variable named by ``api_key_env``, only ever goes into
the ``Authorization`` header; it is scrubbed from every rejection detail in case a server echoes
it back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from muco.config import OpenAIGenerator
from muco.synthesis.generators.base import (
    Generator,
    Outcome,
    Rejection,
    ResultCallback,
    SynthesisInput,
    mllm_identity,
)
from muco.synthesis.parsing import ParseRejection, parse_response
from muco.synthesis.prompts import (
    SYSTEM_PROMPT,
    build_prompt,
    response_json_schema,
)

__all__ = ["OpenAIChatGenerator"]

# A server may ask for a long pause with Retry-After; one image must not stall its worker for long.
MAX_RETRY_AFTER_S = 30.0
MAX_BACKOFF_S = 60.0
# Enough of an error body to see the server's message, not so much that rejections bloat the cache.
DETAIL_CHARS = 300

# Magic bytes of the formats chat servers accept as image_url data.
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class OpenAIChatGenerator(Generator):
    """Asks an OpenAI-compatible server for the M3T turns of each image.

    429, 5xx, timeouts and connection errors are retried up to ``config.retries`` times.
    ``backoff_s`` is the wait before the first retry; retry ``n`` waits
    ``backoff_s * 2**(n-1)`` scaled by a random factor in [0.5, 1.5) (capped at
    :data:`MAX_BACKOFF_S`), unless the server sent ``Retry-After`` seconds (capped at
    :data:`MAX_RETRY_AFTER_S`). ``transport`` replaces httpx's network transport (tests).
    """

    kind = "openai"

    def __init__(
        self,
        config: OpenAIGenerator,
        turns: int = 7,
        paraphrases: int = 3,
        *,
        progress: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        if backoff_s < 0:
            raise ValueError(f"backoff_s must not be negative, got {backoff_s}")
        for endpoint in config.endpoints:
            url = httpx.URL(endpoint)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"endpoint {endpoint!r} is not an http(s) URL with a host")
        self.config = config
        self.turns = turns
        self.paraphrases = paraphrases
        self.progress = progress
        self.backoff_s = backoff_s
        self._transport = transport
        # Parsed once: httpx re-parses a string URL on every request.
        self._urls = tuple(
            httpx.URL(f"{endpoint.rstrip('/')}/chat/completions") for endpoint in config.endpoints
        )
        self._prompt = build_prompt(turns, paraphrases)
        self._format_fields = _response_format_fields(
            config.response_format, response_json_schema(turns, paraphrases)
        )

    def identity(self) -> dict[str, Any]:
        """Model, prompt version and sampling; endpoints and key do not change the output."""
        return mllm_identity(
            self.kind,
            self.config.model,
            self.config.sampling,
            self.turns,
            self.paraphrases,
            response_format=self.config.response_format,
        )

    def generate(self, inputs: Sequence[SynthesisInput], on_result: ResultCallback) -> None:
        """Call ``on_result(input, outcome)`` once per input, on this thread's event loop.

        Runs its own event loop, so it must be called from synchronous code. An exception raised
        by ``on_result`` stops the run and propagates; results still in flight are dropped.
        """
        if inputs:
            asyncio.run(self._generate(inputs, on_result))

    async def _generate(self, inputs: Sequence[SynthesisInput], on_result: ResultCallback) -> None:
        session = _Session(self._urls, _api_key(self.config.api_key_env), random.Random())
        # A shared iterator is the work queue: a fixed pool of workers bounds concurrency and,
        # unlike one task per image, keeps memory flat for millions of images. next() is safe
        # because all workers share one thread.
        pending = iter(inputs)
        rejections: Counter[str] = Counter()
        failed = False

        async def worker(client: httpx.AsyncClient, bar: tqdm) -> None:
            nonlocal failed
            for item in pending:
                outcome = await self._outcome(client, session, item)
                # Once on_result has failed the run is over: no more results go out while the
                # other workers are being cancelled.
                if failed:
                    return
                try:
                    on_result(item, outcome)
                except BaseException:
                    failed = True
                    raise
                if isinstance(outcome, Rejection):
                    rejections[outcome.reason] += 1
                    bar.set_postfix(rejections, refresh=False)
                bar.update()

        workers = min(self.config.concurrency, len(inputs))
        async with self._clients(workers, session.api_key) as clients:
            with tqdm(
                total=len(inputs), disable=not self.progress, file=sys.stderr, unit="img"
            ) as bar:
                tasks = [asyncio.create_task(worker(client, bar)) for client in clients]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _clients(
        self, count: int, api_key: str | None
    ) -> AsyncIterator[list[httpx.AsyncClient]]:
        """One HTTP client per worker.

        httpcore's connection pool scans every connection it holds on each request: with 64
        requests in flight through one shared pool, that costs more CPU than the requests
        themselves. A worker has one request in flight at a time, so its own pool needs one
        connection per endpoint. The CA certificates are loaded once, not per client (tens of
        milliseconds each). A ``transport`` given to the constructor is shared by all clients.
        """
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        size = len(self._urls)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        ssl_context = httpx.create_ssl_context()
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for _ in range(count):
                client = httpx.AsyncClient(
                    transport=self._transport,
                    verify=ssl_context,
                    timeout=httpx.Timeout(self.config.timeout_s),
                    limits=limits,
                    headers=headers,
                )
                clients.append(await stack.enter_async_context(client))
            yield clients

    async def _outcome(
        self, client: httpx.AsyncClient, session: _Session, item: SynthesisInput
    ) -> Outcome:
        # Read on the event loop thread: a local image reads in microseconds, less than a hop to
        # a worker thread would cost.
        try:
            data_url = _image_data_url(item.path)
        except (OSError, ValueError) as exc:
            return Rejection("unreadable_image", f"{item.path}: {exc}", cacheable=True)
        body = json.dumps(self._request_body(data_url)).encode("utf-8")
        outcome = await self._post_with_retries(client, session, body)
        if isinstance(outcome, Rejection) and session.api_key:
            detail = outcome.detail.replace(session.api_key, "[api key]")
            outcome = Rejection(outcome.reason, detail, outcome.cacheable)
        return outcome

    def _request_body(self, data_url: str) -> dict[str, Any]:
        sampling = self.config.sampling
        user_content = [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": self._prompt},
        ]
        return {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_content},
            ],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": sampling.seed,
            **self._format_fields,
        }

    async def _post_with_retries(
        self, client: httpx.AsyncClient, session: _Session, body: bytes
    ) -> Outcome:
        # Each image starts at the next endpoint in rotation and moves one on per retry, so a
        # retry never hits the endpoint that just failed (given several).
        start = next(session.rotation)
        attempts = 0
        while True:
            url = session.urls[(start + attempts) % len(session.urls)]
            attempts += 1
            attempt = await _post(client, url, body)
            if isinstance(attempt, _Answer):
                return self._interpret(attempt)
            if not attempt.retryable or attempts > self.config.retries:
                return attempt.rejection
            delay = attempt.retry_after
            if delay is None:
                delay = self.backoff_s * 2 ** (attempts - 1) * session.jitter.uniform(0.5, 1.5)
            await asyncio.sleep(min(delay, MAX_BACKOFF_S))

    def _interpret(self, answer: _Answer) -> Outcome:
        if answer.truncated:
            detail = f"the answer hit max_tokens={self.config.sampling.max_new_tokens}"
            return Rejection("truncated_output", detail, cacheable=True)
        try:
            return parse_response(answer.content, self.turns, self.paraphrases)
        except ParseRejection as exc:
            return exc.to_rejection()


@dataclass
class _Session:
    """What the workers of one :meth:`OpenAIChatGenerator.generate` call share."""

    urls: tuple[httpx.URL, ...]
    api_key: str | None
    jitter: random.Random  # private, so retries leave the global generator untouched
    rotation: Iterator[int] = field(default_factory=itertools.count)


@dataclass(frozen=True)
class _Answer:
    """The assistant message of a well-formed chat completion."""

    content: str
    truncated: bool  # finish_reason "length": the answer ran out of tokens


@dataclass(frozen=True)
class _Failure:
    """A request that produced no answer; ``retry_after`` is set when the server asked for one."""

    rejection: Rejection
    retryable: bool
    retry_after: float | None = None


async def _post(client: httpx.AsyncClient, url: httpx.URL, body: bytes) -> _Answer | _Failure:
    """One chat-completions request."""
    try:
        response = await client.post(url, content=body)
    except httpx.TimeoutException as exc:
        return _Failure(Rejection("timeout", f"{url}: {_describe(exc)}", False), retryable=True)
    except httpx.RequestError as exc:
        rejection = Rejection("connection_error", f"{url}: {_describe(exc)}", False)
        return _Failure(rejection, retryable=True)
    code = response.status_code
    if not response.is_success:
        text = response.text[:DETAIL_CHARS]
        detail = f"{url}: HTTP {code} {response.reason_phrase}: {text}".rstrip(": ")
        retryable = code == 429 or code >= 500
        return _Failure(
            Rejection(f"http_{code}", detail, cacheable=False),
            retryable=retryable,
            retry_after=_retry_after(response) if retryable else None,
        )
    return _read_completion(response, url)


def _read_completion(response: httpx.Response, url: httpx.URL) -> _Answer | _Failure:
    """``choices[0].message.content`` and its finish reason, or a ``bad_response``."""
    try:
        payload = response.json()
        choice = payload["choices"][0]
        content = choice["message"]["content"]
        finish_reason = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        text = response.text[:DETAIL_CHARS]
        detail = f"{url}: not a chat completion ({_describe(exc)}): {text}"
        return _Failure(Rejection("bad_response", detail, cacheable=False), retryable=False)
    truncated = finish_reason == "length"
    # An answer cut off before any text may carry no content; it is still a truncation.
    if not truncated and not isinstance(content, str):
        detail = f"{url}: message content is {type(content).__name__}, not a string"
        return _Failure(Rejection("bad_response", detail, cacheable=False), retryable=False)
    return _Answer(content if isinstance(content, str) else "", truncated)


def _response_format_fields(mode: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The request fields that constrain the answer to JSON.

    ``guided_json`` sends the schema twice because vLLM versions differ in what they read:
    older ones know only the ``guided_json`` extra parameter, newer ones read the OpenAI-style
    ``response_format`` json_schema (and ignore unknown extra fields). vLLM never counts
    ``response_format`` as a second guide, so the pair is accepted; both name the same schema.
    Hosted OpenAI APIs reject ``guided_json``: use ``json_object`` there.
    """
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    if mode == "guided_json":
        return {
            "guided_json": schema,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "m3t", "schema": schema},
            },
        }
    return {}


def _api_key(env_var: str | None) -> str | None:
    """The key from the environment; None (no Authorization header) when unset or empty."""
    return (os.environ.get(env_var) or None) if env_var else None


def _image_data_url(path: Path) -> str:
    """The image file as a ``data:`` URL.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a PNG, JPEG, WebP or GIF.
    """
    data = Path(path).read_bytes()
    return f"data:{_image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _image_mime(data: bytes) -> str:
    for signature, mime in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError(f"not a PNG, JPEG, WebP or GIF image (starts with {data[:8]!r})")


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After pause in seconds, capped; None when absent or given as a date."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
