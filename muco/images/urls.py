"""URL-list ingest: read a parquet/CSV list of image URLs and download them politely.

Link rot is normal, so every URL ends with exactly one :class:`UrlStatus` whose ``status`` is a
short code (``ok``, ``http_404``, ``timeout``, ...) and whose ``error`` says what happened. The
downloader keeps no image bytes: each successful body is handed to a callback as soon as it
arrives, and only the statuses are returned.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import tqdm

from muco.io import atomic_write_bytes

__all__ = [
    "DownloadSettings",
    "UrlItem",
    "UrlStatus",
    "download_urls",
    "read_url_list",
    "write_status_report",
]

MAX_REDIRECTS = 5
# A server may ask for a long pause with Retry-After; one item must not stall the whole run.
MAX_RETRY_AFTER_S = 30.0
_ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream")

STATUS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("attempts", pa.int32()),
        ("bytes", pa.int64()),
        ("final_url", pa.string()),
        ("content_type", pa.string()),
        ("elapsed_s", pa.float64()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class UrlItem:
    """One URL to download; ``origin`` says where it was listed (``list.csv:row 7``)."""

    key: str
    url: str
    origin: str = ""


@dataclass(frozen=True)
class DownloadSettings:
    """How :func:`download_urls` behaves.

    ``timeout_s`` applies to each network operation (connecting, each read), so a slow but
    steady large download is not cut off. ``retries`` counts attempts after the first; the wait
    before retry ``n`` is ``backoff_s * 2**(n-1)``, scaled by a random factor in [0.5, 1.5).
    """

    concurrency: int = 16
    timeout_s: float = 20.0
    retries: int = 3
    backoff_s: float = 0.5
    max_bytes: int = 64 * 2**20
    user_agent: str = "muco-pipeline/0.1 (+image ingest)"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must not be negative")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")


@dataclass(frozen=True)
class UrlStatus:
    """The outcome of one URL.

    ``status`` is ``ok``, ``http_<code>``, ``timeout``, ``connection_error``,
    ``wrong_content_type``, ``too_large``, ``too_many_redirects`` or ``invalid_url``.
    ``bytes`` counts the body bytes received; ``final_url`` is the URL after redirects (empty
    when no response arrived); ``error`` is a human-readable detail (empty when ``ok``).
    """

    key: str
    url: str
    status: str
    http_status: int | None
    attempts: int
    bytes: int
    final_url: str
    content_type: str
    elapsed_s: float
    error: str


# --------------------------------------------------------------------------- URL lists


def read_url_list(
    path: Path, url_column: str = "url", key_column: str | None = None
) -> list[UrlItem]:
    """Read the URLs of a ``.parquet`` or ``.csv`` file, in file order.

    URLs are stripped; a repeated URL is kept once (its first row wins). A blank URL is kept as
    an item with an empty ``url`` so that :func:`download_urls` reports it as ``invalid_url``.
    Without ``key_column`` the key is the first 16 hex digits of the URL's SHA-256 (blank rows:
    ``row-<n>``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, a missing column, or a blank or repeated key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URL list not found: {path}")
    columns = [url_column] if key_column is None else [url_column, key_column]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path, columns)
    elif suffix == ".csv":
        rows = _csv_rows(path, columns)
    else:
        raise ValueError(f"URL list {path} must be .parquet or .csv, not {suffix or 'no suffix'!r}")
    items: list[UrlItem] = []
    urls_seen: set[str] = set()
    key_rows: dict[str, int] = {}
    # Row numbers count data rows from 1, as a spreadsheet would show them after the header.
    for row, (raw_url, raw_key) in enumerate(rows, start=1):
        url = "" if raw_url is None else str(raw_url).strip()
        if url and url in urls_seen:
            continue
        urls_seen.add(url)
        key = _item_key(path, row, url, raw_key, key_column)
        if key in key_rows:
            raise ValueError(f"{path}: key {key!r} repeats in rows {key_rows[key]} and {row}")
        key_rows[key] = row
        items.append(UrlItem(key=key, url=url, origin=f"{path}:row {row}"))
    return items


def _item_key(path: Path, row: int, url: str, raw_key: object, key_column: str | None) -> str:
    if key_column is None:
        return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] if url else f"row-{row}"
    key = "" if raw_key is None else str(raw_key).strip()
    if not key:
        raise ValueError(f"{path}: row {row} has a blank {key_column!r}")
    return key


def _missing_column(path: Path, column: str, available: Iterable[str]) -> ValueError:
    names = ", ".join(repr(name) for name in available) or "none"
    return ValueError(f"{path}: no column {column!r} (columns: {names})")


def _parquet_rows(path: Path, columns: list[str]) -> list[tuple[object, object]]:
    names = pq.read_schema(path).names
    for column in columns:
        if column not in names:
            raise _missing_column(path, column, names)
    table = pq.read_table(path, columns=columns)
    urls = table.column(columns[0]).to_pylist()
    keys = table.column(columns[-1]).to_pylist() if len(columns) > 1 else [None] * len(urls)
    return list(zip(urls, keys, strict=True))


def _csv_rows(path: Path, columns: list[str]) -> list[tuple[object, object]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        names = reader.fieldnames or []
        for column in columns:
            if column not in names:
                raise _missing_column(path, column, names)
        key_column = columns[-1] if len(columns) > 1 else None
        return [
            (record[columns[0]], record[key_column] if key_column else None) for record in reader
        ]


# --------------------------------------------------------------------------- downloads


def download_urls(
    items: Sequence[UrlItem],
    settings: DownloadSettings,
    on_success: Callable[[UrlItem, bytes, UrlStatus], None],
    *,
    progress: bool = False,
) -> list[UrlStatus]:
    """Download every item; return one status per item, in input order.

    At most ``settings.concurrency`` requests are in flight. Redirects are followed (at most
    :data:`MAX_REDIRECTS`). 429, 5xx, timeouts and connection errors are retried with
    exponential backoff and jitter (a 429's ``Retry-After`` seconds win, capped at
    :data:`MAX_RETRY_AFTER_S`); other failures are final. ``on_success`` is called once per
    downloaded item, on the event loop thread, with the body; an exception it raises aborts the
    run. Must be called from synchronous code (it runs its own event loop).
    """
    return asyncio.run(_download_all(items, settings, on_success, progress))


async def _download_all(
    items: Sequence[UrlItem],
    settings: DownloadSettings,
    on_success: Callable[[UrlItem, bytes, UrlStatus], None],
    progress: bool,
) -> list[UrlStatus]:
    statuses: list[UrlStatus | None] = [None] * len(items)
    pending = iter(enumerate(items))
    # Jitter only spreads retries apart; a private generator leaves the global one untouched.
    jitter = random.Random()
    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )

    async def worker(client: httpx.AsyncClient, bar: tqdm) -> None:
        # A fixed pool of workers bounds concurrency and, unlike one task per item, keeps memory
        # flat for lists of millions of URLs. next() is safe: all workers share one thread.
        for index, item in pending:
            status, body = await _fetch_with_retries(client, item, settings, jitter)
            statuses[index] = status
            if body is not None:
                on_success(item, body, status)
            bar.update()

    async with httpx.AsyncClient(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(settings.timeout_s),
        limits=limits,
        headers={"User-Agent": settings.user_agent},
    ) as client:
        with tqdm(total=len(items), disable=not progress, file=sys.stderr, unit="url") as bar:
            workers = min(settings.concurrency, len(items))
            await asyncio.gather(*(worker(client, bar) for _ in range(workers)))
    return [status for status in statuses if status is not None]


@dataclass
class _Attempt:
    """What one request produced; ``retry_after`` is set when the server asked for a pause."""

    status: str
    error: str
    http_status: int | None = None
    final_url: str = ""
    content_type: str = ""
    size: int = 0
    body: bytes | None = None
    retryable: bool = False
    retry_after: float | None = None


async def _fetch_with_retries(
    client: httpx.AsyncClient, item: UrlItem, settings: DownloadSettings, jitter: random.Random
) -> tuple[UrlStatus, bytes | None]:
    started = time.monotonic()
    problem = _url_problem(item)
    attempts = 0
    if problem is not None:
        attempt = _Attempt(status="invalid_url", error=problem)
    else:
        while True:
            attempts += 1
            attempt = await _fetch_once(client, item.url, settings.max_bytes)
            if not attempt.retryable or attempts > settings.retries:
                break
            delay = attempt.retry_after
            if delay is None:
                delay = settings.backoff_s * 2 ** (attempts - 1) * jitter.uniform(0.5, 1.5)
            await asyncio.sleep(delay)
    status = UrlStatus(
        key=item.key,
        url=item.url,
        status=attempt.status,
        http_status=attempt.http_status,
        attempts=attempts,
        bytes=attempt.size,
        final_url=attempt.final_url,
        content_type=attempt.content_type,
        elapsed_s=time.monotonic() - started,
        error=attempt.error,
    )
    return status, attempt.body


def _url_problem(item: UrlItem) -> str | None:
    """Why ``item.url`` cannot be requested at all, or None."""
    where = f" ({item.origin})" if item.origin else ""
    if not item.url:
        return f"blank URL{where}"
    try:
        url = httpx.URL(item.url)
    except (httpx.InvalidURL, ValueError) as exc:
        return f"{item.url}: {exc}{where}"
    if url.scheme not in ("http", "https") or not url.host:
        return f"{item.url}: not an http(s) URL with a host{where}"
    return None


async def _fetch_once(client: httpx.AsyncClient, url: str, max_bytes: int) -> _Attempt:
    """One GET of ``url``, the body streamed and cut off past ``max_bytes``."""
    try:
        async with client.stream("GET", url) as response:
            return await _read_response(response, url, max_bytes)
    except httpx.TooManyRedirects as exc:
        return _Attempt(status="too_many_redirects", error=f"{url}: {exc}")
    except httpx.TimeoutException as exc:
        return _Attempt(status="timeout", error=f"{url}: {_describe(exc)}", retryable=True)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        # Also reached through a redirect to, e.g., an ftp:// or malformed location.
        return _Attempt(status="invalid_url", error=f"{url}: {_describe(exc)}")
    except httpx.HTTPError as exc:
        return _Attempt(status="connection_error", error=f"{url}: {_describe(exc)}", retryable=True)


async def _read_response(response: httpx.Response, url: str, max_bytes: int) -> _Attempt:
    code = response.status_code
    content_type = response.headers.get("content-type", "")
    seen = {"http_status": code, "final_url": str(response.url), "content_type": content_type}
    if not response.is_success:
        retryable = code == 429 or code >= 500
        retry_after = _retry_after(response) if code == 429 else None
        error = f"{url}: HTTP {code} {response.reason_phrase}".rstrip()
        return _Attempt(
            status=f"http_{code}",
            error=error,
            retryable=retryable,
            retry_after=retry_after,
            **seen,
        )
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type.startswith(_ACCEPTED_CONTENT_TYPES):
        error = f"{url}: content type {content_type or '(none)'!r} is not an image"
        return _Attempt(status="wrong_content_type", error=error, **seen)
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        error = f"{url}: Content-Length {declared} exceeds the limit of {max_bytes} bytes"
        return _Attempt(status="too_large", error=error, **seen)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            error = f"{url}: body exceeds the limit of {max_bytes} bytes"
            return _Attempt(status="too_large", error=error, size=size, **seen)
        chunks.append(chunk)
    return _Attempt(status="ok", error="", size=size, body=b"".join(chunks), **seen)


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After pause in seconds, capped; None when absent or given as a date."""
    value = response.headers.get("retry-after", "").strip()
    return min(float(value), MAX_RETRY_AFTER_S) if value.isascii() and value.isdigit() else None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --------------------------------------------------------------------------- reports


def write_status_report(statuses: Iterable[UrlStatus], path: Path) -> None:
    """Write one row per status to ``path`` (``.parquet`` or ``.csv``), atomically.

    Raises:
        ValueError: ``path`` has another extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"status report {path} must be .parquet or .csv")
    table = pa.Table.from_pylist([asdict(status) for status in statuses], schema=STATUS_SCHEMA)
    buffer = io.BytesIO()
    if suffix == ".parquet":
        pq.write_table(table, buffer)
    else:
        pa_csv.write_csv(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())
