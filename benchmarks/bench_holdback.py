"""Benchmark: CPU cost of the streaming moderation transform itself (proxy.streaming).

No network and no guard latency: the upstream is an in-memory async generator replaying a
realistic OpenAI stream (role chunk, N content chunks of a few characters each, finish chunk,
usage chunk, [DONE]; one event per network chunk, as OpenAI flushes them), and the check is a
guard double that answers "safe" after one event-loop turn. What is measured is what the
gateway adds per streamed event on the hot path: SSE framing, JSON decoding, hold-back
bookkeeping, task switching around checks. `passthrough` (iterate and re-yield the upstream's
bytes) is the floor every proxy pays.

Run: .venv/bin/python benchmarks/bench_holdback.py [--streams 300] [--events 500]
     [--holdback 400]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable

import orjson

from guard_engine.types import Verdict
from proxy.sse import DONE, encode_data
from proxy.streaming import StreamMode, StreamOutcome, moderate_stream

SAFE = Verdict(
    stage="output",
    prompt_label="safe",
    response_label="safe",
    categories=(),
    score=None,
    think=None,
    raw="safe",
    latency_ms=0.0,
    cache_hit=False,
    degraded=False,
    guard="bench",
    model="bench",
    policy="bench@00000000",
    mode="binary",
)
WORDS = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. "]


def stream_events(n: int) -> list[bytes]:
    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }
        return encode_data(orjson.dumps(body))

    usage = {"id": "chatcmpl-bench", "choices": [], "usage": {"total_tokens": n}}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": WORDS[i % len(WORDS)]}) for i in range(n)),
        chunk({}, "stop"),
        encode_data(orjson.dumps(usage)),
        DONE,
    ]


async def upstream(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def check(text: str) -> Verdict:
    await asyncio.sleep(0)  # one loop turn, as an awaited guard call at least costs
    return SAFE


async def passthrough(events: list[bytes]) -> int:
    size = 0
    async for data in upstream(events):
        size += len(data)
    return size


def moderated(mode: StreamMode, holdback: int) -> Callable[[list[bytes]], object]:
    async def run(events: list[bytes]) -> int:
        size = 0
        outcome = StreamOutcome()
        stream = moderate_stream(
            upstream(events),
            mode=mode,
            holdback_chars=holdback,
            check=check,
            refusal="no",
            outcome=outcome,
        )
        async for data in stream:
            size += len(data)
        await outcome.settled()
        assert outcome.checks > 0 and not outcome.blocked
        return size

    return run


async def measure(
    run: Callable[[list[bytes]], object], events: list[bytes], streams: int
) -> tuple[list[float], list[float]]:
    """Per stream: CPU time of this process (robust to other processes on a shared machine)
    and wall time, in microseconds."""
    cpu, wall = [], []
    for _ in range(streams):
        start_cpu, start = time.process_time(), time.perf_counter()
        await run(events)  # type: ignore[misc]
        wall.append((time.perf_counter() - start) * 1e6)
        cpu.append((time.process_time() - start_cpu) * 1e6)
    return cpu, wall


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--holdback", type=int, default=400)
    args = parser.parse_args()
    events = stream_events(args.events)
    scenarios: list[tuple[str, Callable[[list[bytes]], object]]] = [
        ("passthrough", passthrough),
        ("holdback", moderated("holdback", args.holdback)),
        ("holdback-40", moderated("holdback", 40)),
        ("buffer", moderated("buffer", args.holdback)),
        ("monitor", moderated("monitor", args.holdback)),
    ]
    n = len(events)
    print(
        f"{args.streams} streams x {n} events ({args.events} content chunks), "
        f"holdback_chars {args.holdback}; microseconds; cpu = this process's CPU time"
    )
    print(
        f"{'scenario':<13}{'cpu p50':>10}{'cpu p99':>10}{'wall p50':>10}{'wall p99':>10}"
        f"{'cpu/event':>11}{'added/event':>13}"
    )
    base = 0.0
    for name, run in scenarios:
        await measure(run, events, max(10, args.streams // 10))  # warm-up
        cpu, wall = await measure(run, events, args.streams)
        p50 = statistics.median(cpu)
        if name == "passthrough":
            base = p50
        print(
            f"{name:<13}{p50:>10.0f}{pct(cpu, 0.99):>10.0f}{statistics.median(wall):>10.0f}"
            f"{pct(wall, 0.99):>10.0f}{p50 / n:>11.2f}{(p50 - base) / n:>13.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
