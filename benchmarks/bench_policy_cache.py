"""Cost of the policy and verdict-cache steps on the request path (and of one policy reload).

    .venv/bin/python benchmarks/bench_policy_cache.py [--n 20000]

Prints p50/p99 in microseconds per operation. Each sample times a single call with
perf_counter_ns, so the figures include the timer's own cost (~0.1 us).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from guard_engine.cache import VerdictCache, cache_key
from guard_engine.policy.compile import load_policy
from guard_engine.policy.store import PolicyStore
from guard_engine.types import GuardImage, GuardRequest, Turn, Verdict

ROOT = Path(__file__).resolve().parent.parent


def measure(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    q = statistics.quantiles(samples, n=100)
    return q[49] / 1000, q[98] / 1000


def verdict() -> Verdict:
    return Verdict(
        stage="input",
        prompt_label="safe",
        response_label=None,
        categories=(),
        score=None,
        think=None,
        raw="User Safety: safe",
        latency_ms=40.0,
        cache_hit=False,
        degraded=False,
        guard="nemotron",
        model="nvidia/Nemotron-3.5-Content-Safety",
        policy="default@12345678",
        mode="categories",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n

    short = GuardRequest(prompt="How do I reverse a linked list in Python? " * 5)
    long_output = GuardRequest(prompt="Summarize this. " * 250, response="The summary is. " * 250)
    image = GuardImage(data=b"", mime="image/jpeg", sha256="ab" * 32)
    multi = GuardRequest(
        prompt="And what about the second one?",
        images=(image,),
        context=tuple(
            Turn("user" if i % 2 else "assistant", "previous turn " * 40) for i in range(10)
        ),
    )

    def key(req: GuardRequest) -> Callable[[], str]:
        return lambda: cache_key(
            guard="nemotron",
            adapter="nemotron-3.5",
            policy_ref="default@12345678",
            mode="categories",
            request=req,
        )

    cache = VerdictCache(max_entries=10000)
    keys = [f"{i:064x}" for i in range(20000)]
    v = verdict()
    for k in keys[:10000]:
        cache.put(k, v)
    counter = iter(range(10**9))

    store = PolicyStore(sorted((ROOT / "policies").glob("*.yaml")))
    path = str(ROOT / "policies" / "finance.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        reload_path = Path(tmp) / "finance.yaml"
        reload_path.write_text((ROOT / "policies" / "finance.yaml").read_text())
        reload_store = PolicyStore([reload_path])
        rows = [
            ("cache_key, 200-char prompt", key(short), n),
            ("cache_key, 4 kB prompt + 4 kB response", key(long_output), n),
            ("cache_key, 10 context turns + image", key(multi), n),
            (
                "VerdictCache.get hit (10k entries)",
                lambda: cache.get(keys[next(counter) % 10000]),
                n,
            ),
            ("VerdictCache.get miss", lambda: cache.get(keys[10000 + next(counter) % 10000]), n),
            ("VerdictCache.put (evicting)", lambda: cache.put(keys[next(counter) % 20000], v), n),
            ("PolicyStore.get", lambda: store.get(path), n),
            (
                "load_policy (finance.yaml)",
                lambda: load_policy(ROOT / "policies/finance.yaml"),
                500,
            ),
            (
                "PolicyStore.reload_now (finance.yaml)",
                lambda: reload_store.reload_now(reload_path),
                500,
            ),
        ]
        print(f"{'operation':42} {'p50 us':>9} {'p99 us':>9}")
        for name, fn, count in rows:
            p50, p99 = measure(fn, count)
            print(f"{name:42} {p50:9.2f} {p99:9.2f}")


if __name__ == "__main__":
    main()
