"""Benchmark: embedded-guard checks per second under concurrency, with latency percentiles.

    .venv/bin/python benchmarks/bench_embedded_load.py [--concurrency 16] [--checks 400]
        [--threads 1] [--kind prompt|output]

`--concurrency` tasks call `EmbeddedBackend.check` back to back until `--checks` checks have
finished. Checks the guard sheds (GuardUnavailable: the queue-wait bound,
`--max-queue-wait-ms`) are counted apart, with their own latency: under overload they should
be quick refusals, not long waits. Every check's text is unique (a counter is part of it),
so no cache can answer it: the number is what the guard computes, not what it remembers.
`--kind output` sends a prompt and a ~60-token answer (an output check); `prompt` a ~25-token
prompt; `conversation` what one moderated request costs: the input check of a prompt, then
the output check of its answer (the prompt's embedding can be reused), counted as one.
Prints checks/s, the CPU per check of this process and p50/p99 of each check's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from guard_engine.backends.embedded import EmbeddedBackend
from guard_engine.errors import GuardUnavailable
from guard_engine.policy.compile import compile_policy
from guard_engine.policy.schema import PolicyFile
from guard_engine.types import GuardRequest

PROMPTS = [
    "Could you suggest a relaxed itinerary for a weekend in Lisbon, number {i}?",
    "What should I cook tonight with rice, spinach and {i} eggs?",
    "Explain how a hash map works, with an example of {i} keys.",
    "Write a short, friendly reminder email about invoice number {i}.",
]
ANSWER = (
    "Sure! Here is a simple plan. Start the morning with a walk along the river, then visit "
    "the museum before lunch. In the afternoon take tram {i} up the hill for the view, and "
    "finish with pastries at a cafe near the square."
)


def request(i: int, kind: str) -> GuardRequest:
    prompt = PROMPTS[i % len(PROMPTS)].format(i=i)
    if kind == "output":
        return GuardRequest(prompt=prompt, response=ANSWER.format(i=i))
    return GuardRequest(prompt=prompt)


async def main(concurrency: int, checks: int, threads: int, kind: str, max_wait: float) -> None:
    backend = EmbeddedBackend(
        name="bench", threads=threads, max_pending=10_000, max_queue_wait_ms=max_wait
    )
    policy = compile_policy(PolicyFile(name="bench", description="bench", mode="binary"), "<b>")
    await backend.warm()
    for i in range(8):  # warm the worker thread and caches
        await backend.check(request(10_000_000 + i, kind), policy, mode="binary")
    counter = iter(range(checks))
    wall: list[float] = []
    shed: list[float] = []

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            try:
                if kind == "conversation":
                    await backend.check(request(i, "prompt"), policy, mode="binary")
                    await backend.check(request(i, "output"), policy, mode="binary")
                else:
                    await backend.check(request(i, kind), policy, mode="binary")
            except GuardUnavailable:
                shed.append((time.perf_counter() - t0) * 1000.0)
            else:
                wall.append((time.perf_counter() - t0) * 1000.0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await backend.aclose()
    print(
        f"kind={kind} concurrency={concurrency} checks={checks} threads={threads} "
        f"max_queue_wait_ms={max_wait:g} cpus={os.cpu_count()} "
        f"loadavg={tuple(round(x, 2) for x in os.getloadavg())}"
    )
    done = len(wall)
    q = statistics.quantiles(wall, n=100) if done > 1 else [float("nan")] * 99
    print(
        f"judged {done}: {done / elapsed:.1f} checks/s   {cpu / max(1, done) * 1000:.1f} ms "
        f"CPU/check   p50 {q[49]:.1f} ms   p99 {q[98]:.1f} ms"
    )
    if shed:
        sq = statistics.quantiles(shed, n=100) if len(shed) > 1 else [shed[0]] * 99
        print(f"shed {len(shed)}: p50 {sq[49]:.1f} ms   p99 {sq[98]:.1f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--checks", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kind", choices=("prompt", "output", "conversation"), default="prompt")
    ap.add_argument("--max-queue-wait-ms", type=float, default=60_000.0)
    a = ap.parse_args()
    asyncio.run(main(a.concurrency, a.checks, a.threads, a.kind, a.max_queue_wait_ms))
