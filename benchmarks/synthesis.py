"""Throughput of the OpenAI-compatible M3T generator against a local fake server.

The fake server answers every chat-completions request with a valid M3T answer after a fixed
``--latency``, so the generator's rate shows how well it keeps requests in flight. It runs in a
child process (an asyncio HTTP/1.1 responder) so that it does not compete with the generator
for the GIL.

Each concurrency ``c`` runs ``--rounds`` rounds of requests: ``N = rounds * c`` tiny PNGs, so
every level ideally takes ``rounds * latency`` seconds (3.2 s at the defaults) and the whole
benchmark well under a minute, where a fixed N of 1024 would take minutes at concurrency 1.
Sixteen rounds amortise the one-off costs of a run (clients, TCP connections) the way a long
production run does; the ideal rate is ``c / latency``. The issue's requirement: at
concurrency 64, at least 80% of ``64 / latency``.

    .venv/bin/python benchmarks/synthesis.py --latency 0.2 --concurrency 1 4 16 64
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from muco.config import OpenAIGenerator
from muco.synthesis.content import M3TContent
from muco.synthesis.generators.base import Outcome, SynthesisInput
from muco.synthesis.generators.openai_client import OpenAIChatGenerator
from muco.synthesis.prompts import turn_kinds

REQUIRED_CONCURRENCY = 64
REQUIRED_RATIO = 0.8


def ideal_rate(concurrency: int, latency: float) -> float:
    """Records per second if every request took exactly ``latency`` and nothing else cost."""
    return concurrency / latency


# --------------------------------------------------------------------------- fake server


def _completion_body() -> bytes:
    """A chat completion whose content parses as a 7-turn, 3-paraphrase M3T answer."""
    turns = [
        {
            "type": kind,
            "queries": [f"Paraphrase {j} of question {i} about this image?" for j in range(3)],
            "answer": f"answer {i}",
            "answer_sentence": f"The answer to question {i} is answer {i}.",
            "negative": f"wrong answer {i}",
        }
        for i, kind in enumerate(turn_kinds(7))
    ]
    content = json.dumps({"description": "A small square of one colour.", "turns": turns})
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return json.dumps({"object": "chat.completion", "choices": [choice]}).encode()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _serve(latency: float) -> None:
    """Answer every request after ``latency`` seconds; print the port once listening."""
    body = _completion_body()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Keep-alive: one connection carries request after request until the client closes it.
        try:
            while True:
                request_head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(request_head))
                await asyncio.sleep(latency)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The server child process and its endpoint URL."""
    command = [sys.executable, __file__, "--serve", "--latency", str(latency)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, f"http://127.0.0.1:{port}/v1"


# --------------------------------------------------------------------------- benchmark


def make_images(folder: Path, count: int) -> list[SynthesisInput]:
    inputs = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (index % 256, index // 256, 99)).save(buffer, format="PNG")
        path = folder / f"img{index:05d}.png"
        path.write_bytes(buffer.getvalue())
        inputs.append(SynthesisInput(image_id=path.stem, sha256=f"{index:064x}", path=path))
    return inputs


def measure(endpoint: str, inputs: list[SynthesisInput], concurrency: int) -> tuple[float, int]:
    """Seconds to generate content for ``inputs``, and how many ended as rejections."""
    config = OpenAIGenerator(
        kind="openai",
        endpoints=(endpoint,),
        model="benchmark",
        api_key_env=None,
        concurrency=concurrency,
        timeout_s=60.0,
        retries=0,
    )
    generator = OpenAIChatGenerator(config)
    rejected = 0

    def on_result(item: SynthesisInput, outcome: Outcome) -> None:
        nonlocal rejected
        rejected += not isinstance(outcome, M3TContent)

    started = time.perf_counter()
    generator.generate(inputs, on_result)
    return time.perf_counter() - started, rejected


def run_benchmark(latency: float, levels: list[int], rounds: int) -> dict:
    process, endpoint = start_server(latency)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            pool = make_images(Path(folder), rounds * max(levels))
            for concurrency in levels:
                images = rounds * concurrency
                seconds, rejected = measure(endpoint, pool[:images], concurrency)
                rate = images / seconds
                ideal = ideal_rate(concurrency, latency)
                rows.append(
                    {
                        "concurrency": concurrency,
                        "images": images,
                        "seconds": round(seconds, 3),
                        "records_per_s": round(rate, 1),
                        "ideal_per_s": round(ideal, 1),
                        "ratio": round(rate / ideal, 3),
                        "rejected": rejected,
                    }
                )
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {"latency_s": latency, "rounds": rounds, "rows": rows}


def requirement(result: dict) -> dict | None:
    """The issue's check at concurrency 64, or None when that level was not measured."""
    row = next((r for r in result["rows"] if r["concurrency"] == REQUIRED_CONCURRENCY), None)
    if row is None:
        return None
    needed = REQUIRED_RATIO * REQUIRED_CONCURRENCY / result["latency_s"]
    passed = row["records_per_s"] >= needed and row["rejected"] == 0
    return {
        "needed_per_s": round(needed, 1),
        "measured_per_s": row["records_per_s"],
        "passed": passed,
    }


def print_table(result: dict) -> None:
    print(f"fake server latency {result['latency_s']} s per request, {result['rounds']} rounds")
    header = f"{'concurrency':>11}  {'images':>6}  {'seconds':>7}  {'records/s':>9}  "
    print(header + f"{'ideal':>7}  {'ratio':>5}  {'rejected':>8}")
    for row in result["rows"]:
        print(
            f"{row['concurrency']:>11}  {row['images']:>6}  {row['seconds']:>7.2f}  "
            f"{row['records_per_s']:>9.1f}  {row['ideal_per_s']:>7.1f}  {row['ratio']:>5.2f}  "
            f"{row['rejected']:>8}"
        )
    check = result["requirement"]
    if check is None:
        print(f"requirement not checked: concurrency {REQUIRED_CONCURRENCY} was not measured")
    else:
        verdict = "holds" if check["passed"] else "FAILS"
        print(
            f"requirement {verdict}: {check['measured_per_s']} records/s at concurrency "
            f"{REQUIRED_CONCURRENCY}, needed >= {check['needed_per_s']} "
            f"({REQUIRED_RATIO:.0%} of {REQUIRED_CONCURRENCY} / latency)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rounds", type=int, default=16, help="images per level / concurrency")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthesis.json"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.latency))
        return 0
    if args.latency <= 0 or args.rounds < 1 or min(args.concurrency) < 1:
        parser.error("--latency, --rounds and --concurrency must be positive")
    result = run_benchmark(args.latency, args.concurrency, args.rounds)
    result["requirement"] = requirement(result)
    result["python"] = platform.python_version()
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    check = result["requirement"]
    return 1 if check is not None and not check["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
