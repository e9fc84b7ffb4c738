"""Judges: the project's annotator loop vs the ideal request rate, side by side in one run.

A fixed-latency OpenAI-compatible endpoint (a minimal asyncio HTTP/1.1 server in its own process, so
that its CPU does not steal the client's interpreter) answers every chat completion after ``--latency``
seconds. At concurrency c the ideal rate is c / latency. The rate is what the endpoint sees in steady
state: replies after the first wave divided by the time they took (so process start-up, imports and
connection set-up, paid once per task, are left out; the wall time of the whole call is shown too).
Measured, interleaved:
- bare: ``openai.AsyncOpenAI`` + a semaphore + ``asyncio.gather`` (nothing else);
- project: ``synpref.llm.client.run_requests`` with the response cache (fresh directory), a budget and a
  rate limiter (set above the ideal rate) in the loop.

    python benchmarks/judges_speed.py                             # concurrency 8, 16, 32, 64
    python benchmarks/judges_speed.py --concurrency 8 --requests 64 --repeats 1    # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, report, summary, table, timed  # noqa: E402

REPLY = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fixed",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "[[A]]"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
    }
).encode()


REPLIED: list[float] = []  # when each reply went out (the server process's clock)


def _reply(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if head.startswith(b"GET /stats"):  # the reply times so far, then a fresh start
                writer.write(_reply(json.dumps(REPLIED).encode()))
                REPLIED.clear()
            else:
                await asyncio.sleep(latency)
                writer.write(_reply(REPLY))
                REPLIED.append(time.monotonic())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def serve(port: int, latency: float) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _handle(r, w, latency), "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def steady_rate(base_url: str, concurrency: int) -> float:
    """Replies per second after the first wave, as the endpoint saw them."""
    import urllib.request

    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as r:
        times = sorted(json.loads(r.read()))
    steady = times[concurrency - 1 :]
    return (len(steady) - 1) / (steady[-1] - steady[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Which response is better? pair {i} " + "lorem ipsum " * 40}]


def bare(base_url: str, n: int, concurrency: int) -> None:
    import openai

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await client.chat.completions.create(model="fixed", messages=_messages(i), max_tokens=8)

        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()

    asyncio.run(run())


def project(base_url: str, n: int, concurrency: int, ideal_rate: float) -> None:
    from synpref.llm.client import AnnotatorConfig, Budget, Request, run_requests

    cfg = AnnotatorConfig(
        name="bench",
        base_url=base_url,
        model="fixed",
        max_concurrency=concurrency,
        requests_per_minute=ideal_rate * 60 * 2,  # in the loop, never the bottleneck
        max_tokens=8,
        price_in_per_1k=0.001,
    )
    requests = [Request(f"r{i}", tuple((m["role"], m["content"]) for m in _messages(i)), 0, 0) for i in range(n)]
    with tempfile.TemporaryDirectory() as cache:
        responses, usage = run_requests(cfg, requests, cache, Budget(usd=1e6))
    assert usage.requests == n and all(r.status == "ok" for r in responses), usage.as_dict()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs=2, metavar=("PORT", "LATENCY"), help=argparse.SUPPRESS)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per answer (real LLMs: 1-20 s)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--requests", type=int, default=0, help="per run (default: 24 waves of the concurrency)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    if a.serve:
        serve(int(a.serve[0]), float(a.serve[1]))
        return {}
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(a.latency)])
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    rows, worst = [], 1.0
    try:
        for c in a.concurrency:
            n = a.requests or 24 * c
            ideal = c / a.latency
            bare(base_url, c, c), project(base_url, c, c, ideal)  # warm-up: imports, first connections
            steady_rate(base_url, 1)

            def measured(fn, n=n, c=c) -> dict:
                return {**timed(fn), "rate": steady_rate(base_url, c)}

            runs = interleaved(
                {
                    "bare": lambda n=n, c=c: measured(lambda: bare(base_url, n, c)),
                    "project": lambda n=n, c=c, ideal=ideal: measured(lambda: project(base_url, n, c, ideal)),
                },
                a.repeats,
            )
            for name in ("bare", "project"):
                wall, rate = summary(runs[name], "s")["median"], summary(runs[name], "rate")["median"]
                rows.append([c, name, n, wall, n / wall, rate, ideal, 100 * rate / ideal])
                if name == "project":
                    worst = min(worst, rate / ideal)
    finally:
        server.terminate()
    head = ["concurrency", "client", "requests", "wall s", "req/s (wall)", "req/s (steady)", "ideal", "% of ideal"]
    title = f"Judges vs a {a.latency:g} s fixed-latency endpoint ({a.repeats} repeats, interleaved)"
    report("judges", table(title, head, rows))
    return {"worst_share_of_ideal": worst}


if __name__ == "__main__":
    main()
