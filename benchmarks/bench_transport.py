"""httpx transports side by side: what one upstream call costs the calling process.

The gateway makes every upstream and guard call through an `httpx.AsyncClient`; the
transport under it decides most of the client-side CPU a call costs. This compares, in one
process and one run (so machine noise hits all of them alike), block by block in turn:

- `httpx`: httpx's default transport (httpcore over anyio and h11);
- `aiohttp`: `httpx_aiohttp.AiohttpTransport` (aiohttp's client behind httpx's interface,
  the transport the OpenAI SDK offers);
- `h1`: the gateway's own `proxy.upstreams.h1_transport.H1Transport` (when it exists).

Each against the fast upstream double (benchmarks/upstream_double.py, its own process), for a
JSON chat answer sequentially and at concurrency 16, and a streamed (SSE) answer sequentially.
Reported per transport: latency percentiles and this process's CPU time per request (from
`time.process_time`, all threads; the upstream's CPU is not counted).

    .venv/bin/python benchmarks/bench_transport.py [--requests 3000] [--block 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_passthrough import free_port, pct, wait_port  # noqa: E402

CHAT = orjson.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Write one short sentence about foxes."}],
    }
)
CHAT_STREAM = orjson.dumps({**orjson.loads(CHAT), "stream": True})


def transports() -> dict[str, Callable[[], httpx.AsyncBaseTransport]]:
    makers: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
        "httpx": lambda: httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=100)),
    }
    with contextlib.suppress(ImportError):
        from httpx_aiohttp import AiohttpTransport

        makers["aiohttp"] = lambda: AiohttpTransport(
            limits=httpx.Limits(max_connections=100), trust_env=False
        )
    with contextlib.suppress(ImportError):
        from proxy.upstreams.h1_transport import H1Transport

        makers["h1"] = lambda: H1Transport(max_connections=100)
    return makers


async def one_json(client: httpx.AsyncClient, url: str) -> None:
    response = await client.post(url, content=CHAT, headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.content


async def one_stream(client: httpx.AsyncClient, url: str) -> None:
    request = client.build_request(
        "POST", url, content=CHAT_STREAM, headers={"content-type": "application/json"}
    )
    response = await client.send(request, stream=True)
    try:
        async for _ in response.aiter_raw():
            pass
    finally:
        await response.aclose()
    assert response.status_code == 200


async def timed_block(
    call: Callable[[], Awaitable[None]], n: int, concurrency: int
) -> tuple[list[float], float]:
    """Latencies (ms) of n calls made by `concurrency` workers, and CPU seconds spent."""
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter_ns()
            await call()
            latencies.append((time.perf_counter_ns() - t0) / 1e6)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.process_time() - cpu0


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    made = {
        name: httpx.AsyncClient(transport=make(), timeout=30.0, trust_env=False)
        for name, make in transports().items()
    }
    try:
        yield made
    finally:
        for client in made.values():
            await client.aclose()


Call = Callable[[httpx.AsyncClient], Awaitable[None]]


async def compare(
    made: dict[str, httpx.AsyncClient], call: Call, n: int, block: int, c: int
) -> None:
    """Blocks of `block` calls per transport in turn, until each made `n`; prints one table."""
    latencies: dict[str, list[float]] = {name: [] for name in made}
    cpu = dict.fromkeys(made, 0.0)
    for client in made.values():  # warm-up: connections open, code paths hot
        await timed_block(partial(call, client), 200, c)
    for _ in range(n // block):
        for name, client in made.items():
            lat, spent = await timed_block(partial(call, client), block, c)
            latencies[name] += lat
            cpu[name] += spent
    print(f"  {'transport':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    for name, lat in latencies.items():
        print(
            f"  {name:<10} {pct(lat, 0.5):8.3f} {pct(lat, 0.9):8.3f} "
            f"{pct(lat, 0.99):8.3f} {cpu[name] / len(lat) * 1000:11.3f}"
        )


async def run(port: int, requests: int, block: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    scenarios: list[tuple[str, int, Call]] = [
        ("json c=1", 1, partial(one_json, url=url)),
        ("json c=16", 16, partial(one_json, url=url)),
        ("sse c=1", 1, partial(one_stream, url=url)),
    ]
    async with clients() as made:
        for scenario, concurrency, call in scenarios:
            print(f"\n{scenario} ({requests} requests per transport)")
            await compare(made, call, requests, block, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--block", type=int, default=100)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "upstream_double.py"), "--port", str(port), "--chunks", "20"]
    )
    try:
        wait_port(port, upstream)
        import uvloop

        uvloop.run(run(port, args.requests, args.block))
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
