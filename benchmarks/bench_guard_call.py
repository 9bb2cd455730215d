"""Where one guard call's CPU goes, stage by stage, in the gateway's own process.

Builds the gateway's guard stack the way `guardline serve` does (`proxy.guards.build_engine`:
verdict cache -> windowed backend -> SGLang backend on the lean HTTP/1.1 transport -> Nemotron
adapter) against the SGLang double (`tests/doubles/sglang_server.py`, its own process, no
delay), then times, in CPU time of this process (`time.process_time`, all threads):

- `engine.check`: a whole guard call as the pipeline makes it (unique prompt: cache miss);
- its pieces alone, repeated: rendering the Nemotron body, serializing it, the cache key,
  the HTTP round trip through the backend's client, reading the answer and parsing the
  verdict.

The pieces are measured in separate loops (warm caches, back to back), so they add up to
less than a whole call measured between the gateway's real idle gaps: use the whole call to
compare versions and the pieces to see the proportions.

    .venv/bin/python benchmarks/bench_guard_call.py [--calls 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from moderation_procs import guard_double  # noqa: E402

from guard_engine.backends.sglang import SGLangBackend, message_content  # noqa: E402
from guard_engine.backends.windowed import WindowedBackend  # noqa: E402
from guard_engine.cache import VerdictCache, cache_key  # noqa: E402
from guard_engine.engine import GuardEngine  # noqa: E402
from guard_engine.policy.compile import compile_policy  # noqa: E402
from guard_engine.policy.compiled import CompiledPolicy  # noqa: E402
from guard_engine.policy.schema import PolicyFile  # noqa: E402
from guard_engine.types import GuardRequest  # noqa: E402
from proxy.config_schema import SGLangGuardConfig  # noqa: E402
from proxy.guards import build_backend  # noqa: E402

PROMPT = "Write one short sentence about foxes, please, for my daughter's homework."
ANSWER = "The quick brown fox jumps over the lazy dog while the farmer watches from afar."


def engine_for(url: str) -> GuardEngine:
    config = SGLangGuardConfig(type="sglang", base_url=url, timeout_ms=3000)
    return GuardEngine({"g": build_backend("g", config)}, default_guard="g", cache=VerdictCache())


class BareConnection(asyncio.Protocol):
    """The least a round trip can cost here: one keep-alive socket, the request's bytes
    written as they are, the answer read until its Content-Length is in. No HTTP library."""

    def __init__(self) -> None:
        self._buffer = b""
        self._done: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._request = b""

    @classmethod
    async def open(cls, url: str, body: bytes) -> BareConnection:
        target = httpx.URL(url)
        loop = asyncio.get_running_loop()
        _, bare = await loop.create_connection(cls, target.host, target.port)
        bare._request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: %b\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (target.netloc, len(body), body)
        )
        return bare

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self._buffer[:head_end].lower()
        start = head.index(b"content-length:") + len(b"content-length:")
        end = head.find(b"\r\n", start)
        length = int(head[start : end if end > 0 else None])
        if len(self._buffer) >= head_end + 4 + length and self._done is not None:
            self._buffer = b""
            self._done.set_result(None)

    async def round_trip(self, _: int) -> object:
        assert self._transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self._transport.write(self._request)
        return await self._done

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def cpu_us(n: int, step: Callable[[int], Awaitable[object]]) -> float:
    """CPU microseconds per call of `step(i)`, over n calls after 50 unmeasured ones."""
    for i in range(50):
        await step(-1 - i)
    start = time.process_time()
    for i in range(n):
        await step(i)
    return (time.process_time() - start) / n * 1e6


async def run(url: str, calls: int, rounds: int) -> None:
    engine = engine_for(url)
    raw_policy = {"name": "bench", "description": "guard call benchmark", "mode": "categories"}
    policy: CompiledPolicy = compile_policy(PolicyFile.model_validate(raw_policy), "bench.yaml")
    windowed = engine.guards["g"]
    assert isinstance(windowed, WindowedBackend) and isinstance(windowed.inner, SGLangBackend)
    sglang = windowed.inner
    adapter = sglang.adapter
    output = GuardRequest(prompt=PROMPT, response=ANSWER)
    body = orjson.dumps(adapter.build_body(output, policy, model=sglang.model, mode="categories"))
    answer = "User Safety: safe\nResponse Safety: safe\n"
    raw = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})

    unique = itertools.count()  # a new prompt every call: the verdict cache never answers

    async def whole_output(_: int) -> object:
        request = GuardRequest(prompt=f"{PROMPT} {next(unique)}", response=ANSWER)
        return await engine.check(request, policy)

    async def whole_input(_: int) -> object:
        return await engine.check(GuardRequest(prompt=f"{PROMPT} {next(unique)}"), policy)

    async def render(_: int) -> object:
        return adapter.build_body(output, policy, model=sglang.model, mode="categories")

    async def serialize(_: int) -> object:
        return orjson.dumps(
            adapter.build_body(output, policy, model=sglang.model, mode="categories")
        )

    async def key(_: int) -> object:
        return cache_key(
            guard="g",
            adapter=sglang.model,
            policy_ref=policy.ref,
            mode="categories",
            request=output,
        )

    async def round_trip(_: int) -> object:
        return await sglang._call(body, None)  # the HTTP part of SGLangBackend.check

    transport = sglang._transport
    assert transport is not None
    prebuilt = httpx.Request(
        "POST",
        httpx.URL(url + "/v1/chat/completions"),
        content=body,
        headers=[(b"content-type", b"application/json")],
        extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), 3.0)},
    )

    async def transport_only(_: int) -> object:
        response = await transport.handle_async_request(prebuilt)
        return [part async for part in response.stream]  # type: ignore[union-attr]

    bares = [await BareConnection.open(url, body)]

    async def bare_round_trip(i: int) -> object:
        if bares[0].closed:  # the double drops a connection idle for 5 s (between rounds)
            bares[0] = await BareConnection.open(url, body)
        return await bares[0].round_trip(i)

    async def parse(_: int) -> object:
        return adapter.parse(message_content(raw, guard="g"), has_response=True)

    rows = [
        ("engine.check, input (cache miss)", whole_input),
        ("engine.check, output (cache miss)", whole_output),
        ("  render the Nemotron body", render),
        ("  render + serialize (orjson)", serialize),
        ("  cache key (sha256)", key),
        ("  HTTP round trip (client + transport)", round_trip),
        ("    transport alone, request prebuilt", transport_only),
        ("    floor: bare socket, bytes prebuilt", bare_round_trip),
        ("  read the answer + parse the verdict", parse),
    ]
    # Rounds of every row in turn; the median of each row's rounds damps other processes' bursts.
    samples: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(rounds):
        for name, step in rows:
            samples[name].append(await cpu_us(calls, step))
    print(f"{'stage':<42} {'CPU µs/call':>12}   (median of {rounds} rounds of {calls} calls)")
    for name, values in samples.items():
        print(f"{name:<42} {statistics.median(values):12.1f}")
    bares[0].close()
    await engine.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    with guard_double(0.0) as guard:
        uvloop.run(run(guard.url, args.calls, args.rounds))


if __name__ == "__main__":
    main()
