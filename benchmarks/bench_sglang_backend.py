"""Benchmark: the engine-side cost of one SGLang guard call.

1. Adapter work alone (no I/O): `build_body` + JSON serialization + `parse`, in µs, for an
   input check, an output check and an input check with one normalized image (~80 KB JPEG,
   base64-encoded into the body).
2. `SGLangBackend.check` over an in-memory httpx transport that answers a canned completion
   (no sockets, no server): the backend's whole engine-side cost per call (rendering, httpx
   request/response objects, deadline, slot, breaker, parsing), next to a bare httpx POST over
   the same transport.
3. Full `SGLangBackend.check` against the SGLang test double running in ITS OWN PROCESS
   (`python -m tests.doubles.sglang_server`, so it does not share the GIL with the client),
   at a zero-delay double and at a fixed 15 ms "model" latency, sequentially. The baseline is a
   bare pooled httpx POST of the same pre-serialized body plus `orjson.loads` of the answer;
   `check p50 - bare p50` is the backend's own overhead (rendering, parsing, deadline, slot,
   breaker) on top of the unavoidable HTTP round trip.

Run: .venv/bin/python benchmarks/bench_sglang_backend.py [--calls 2000] [--iterations 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.backends.sglang import SGLangBackend
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardImage, GuardRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.factories import make_policy  # noqa: E402

MODEL = "nvidia/Nemotron-3.5-Content-Safety"
# About 50 tokens of ordinary user text.
PROMPT = (
    "I'm planning a week-long hiking trip in the Alps in late September with two friends. "
    "What gear should we bring, how should we plan daily distances, and what are the main "
    "safety risks we should prepare for?"
)
RESPONSE = "Pack layers, a map, a first-aid kit and check the weather every morning. " * 3
POLICY: CompiledPolicy = make_policy(custom_policy="Disallowed Behaviors:\n- x\n")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, values: list[float], unit: str) -> str:
    return (
        f"| {name} | {len(values)} | {statistics.median(values):.1f} {unit} "
        f"| {pct(values, 0.99):.1f} {unit} |"
    )


def bench_adapter(iterations: int) -> list[str]:
    adapter = NemotronAdapter()
    image_bytes = os.urandom(80_000)
    image = GuardImage(data=image_bytes, mime="image/jpeg", sha256="0" * 64)
    cases = {
        "input check (text)": (GuardRequest(prompt=PROMPT), "User Safety: safe"),
        "output check (text)": (
            GuardRequest(prompt=PROMPT, response=RESPONSE),
            "User Safety: safe\nResponse Safety: unsafe\nSafety Categories: Violence, Threat",
        ),
        "input check + 80 KB image": (
            GuardRequest(prompt=PROMPT, images=(image,)),
            "User Safety: safe",
        ),
    }
    lines = []
    for name, (request, answer) in cases.items():
        has_response = request.response is not None
        samples = []
        for i in range(iterations + 200):
            start = time.perf_counter_ns()
            orjson.dumps(adapter.build_body(request, POLICY, model=MODEL, mode="categories"))
            adapter.parse(answer, has_response=has_response)
            if i >= 200:  # warm-up
                samples.append((time.perf_counter_ns() - start) / 1000)
        lines.append(row(f"build_body+dumps+parse, {name}", samples, "µs"))
    return lines


async def timed_pair(
    a: Callable[[], Awaitable[object]], b: Callable[[], Awaitable[object]], calls: int, scale: float
) -> tuple[list[float], list[float]]:
    """Alternate a and b call by call, so that load drift on a shared machine hits both."""
    for _ in range(50):  # warm-up: connections, caches
        await a()
        await b()
    sa: list[float] = []
    sb: list[float] = []
    for _ in range(calls):
        for fn, out in ((a, sa), (b, sb)):
            start = time.perf_counter_ns()
            await fn()
            out.append((time.perf_counter_ns() - start) / scale)
    return sa, sb


def canned(request: httpx.Request) -> httpx.Response:
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "User Safety: safe"},
                "finish_reason": "stop",
            }
        ],
    }
    return httpx.Response(200, content=orjson.dumps(body))


async def bench_in_memory(calls: int) -> list[str]:
    request = GuardRequest(prompt=PROMPT)
    transport = httpx.MockTransport(canned)
    backend = SGLangBackend(
        name="nemotron",
        base_url="http://guard.invalid:30000",
        model=MODEL,
        adapter=NemotronAdapter(),
        timeout_ms=10_000,
        max_concurrency=8,
        transport=transport,
    )
    body = orjson.dumps(
        NemotronAdapter().build_body(request, POLICY, model=MODEL, mode="categories")
    )
    bare_client = httpx.AsyncClient(transport=transport)

    async def bare() -> object:
        response = await bare_client.post(
            "http://guard.invalid:30000/v1/chat/completions", content=body
        )
        return orjson.loads(response.content)["choices"][0]["message"]["content"]

    async def check() -> object:
        return await backend.check(request, POLICY, mode="categories")

    bare_us, check_us = await timed_pair(bare, check, calls, 1e3)
    await bare_client.aclose()
    await backend.aclose()
    return [
        row("bare httpx POST, in-memory transport", bare_us, "µs"),
        row("SGLangBackend.check, in-memory transport", check_us, "µs"),
    ]


async def bench_calls(url: str, calls: int, label: str) -> list[str]:
    request = GuardRequest(prompt=PROMPT)
    backend = SGLangBackend(
        name="nemotron",
        base_url=url,
        model=MODEL,
        adapter=NemotronAdapter(),
        timeout_ms=10_000,
        max_concurrency=8,
    )
    body = orjson.dumps(
        NemotronAdapter().build_body(request, POLICY, model=MODEL, mode="categories")
    )
    bare_client = httpx.AsyncClient(headers={"content-type": "application/json"})

    async def bare() -> object:
        response = await bare_client.post(url + "/v1/chat/completions", content=body)
        return orjson.loads(response.content)["choices"][0]["message"]["content"]

    async def check() -> object:
        return await backend.check(request, POLICY, mode="categories")

    bare_ms, check_ms = await timed_pair(bare, check, calls, 1e6)
    await bare_client.aclose()
    await backend.aclose()
    overhead = statistics.median(check_ms) - statistics.median(bare_ms)
    return [
        row(f"bare httpx POST, double {label}", bare_ms, "ms"),
        row(f"SGLangBackend.check, double {label}", check_ms, "ms"),
        f"| backend overhead (check p50 - bare p50), double {label} | | {overhead:.3f} ms | |",
    ]


def start_double(delay_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.sglang_server", "--delay-ms", str(delay_ms)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop_double(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # the double exits when its stdin closes
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--calls-delayed", type=int, default=300)
    args = parser.parse_args()
    print("| measurement | n | p50 | p99 |")
    print("|---|---|---|---|")
    for line in bench_adapter(args.iterations):
        print(line, flush=True)
    for line in asyncio.run(bench_in_memory(args.iterations // 4)):
        print(line, flush=True)
    for delay, calls in ((0.0, args.calls), (15.0, args.calls_delayed)):
        proc, url = start_double(delay)
        try:
            for line in asyncio.run(bench_calls(url, calls, f"{delay:g} ms")):
                print(line, flush=True)
        finally:
            stop_double(proc)


if __name__ == "__main__":
    main()
