"""Benchmark: what Redis limits plus the shared (Redis) verdict cache add to a moderated
request through the real gateway (issue 12: added p50 <= 0.5 ms, CPU per request recorded).

The sibling of bench_limits.py (which measures limits alone on a route that checks nothing):
here the route's policy checks input and output with the SGLang guard double, so the verdict
cache is on the path. Processes: a real `redis-server` (free port, no persistence), the
upstream double, the SGLang guard double (`--guard-delay-ms`, default 5), and four
`guardline serve` gateways with the same route, policy, tenant and guard:

  off     in-process verdict cache only, no limits (today's default)
  limits  limits (requests, tokens, concurrency per tenant) in Redis; in-process cache only
  shared  the same limits in Redis AND `cache.redis_url` (the shared verdict cache)
  peer    configured like `shared`: another replica, used only to compute verdicts that
          `shared` then finds in Redis (never measured)

Phases, each with `--requests` requests per measured gateway, sequential on keep-alive
connections, off, limits and shared interleaved in a shuffled order each round (fixed seed)
so that all see the same machine load:

  repeat  one prompt, asked again and again: both checks are in-process LRU hits, so
          `shared` adds only the limits' one Redis call (the acceptance number)
  unique  a new prompt every round (the same one to both gateways): both miss the LRU;
          `shared` adds a Redis GET (a miss) per check before the guard call, and a SET in
          the background after it
  peer    prompts first sent through `peer` (unmeasured): `off` calls the guard; `shared`
          misses its LRU and finds both verdicts in Redis (one GET each, no guard call)

Columns: p50 / p99 client latency; added p50 = p50(variant) - p50(off) in the same phase;
gateway CPU ms per request (user+system of the gateway process over the phase); Redis commands
per request of limits + shared together (INFO commandstats deltas: EVALSHA = limits, two per
round; GET/SET = the cache tier, `shared` only).

Run: .venv/bin/python benchmarks/bench_shared_cache.py [--requests 300] [--warmup 50]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_limits import LIMITS, pct, redis_info
from moderation_client import chat
from moderation_procs import Child, gateway, guard_double, upstream_double

from tests.redis_server import RedisServer

KEY = "sk-bench-tenant-key"
HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


@dataclass
class Measured:
    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0


def config(
    tmp: Path, name: str, upstream: str, guard: str, redis_url: str | None, *, cache: bool
) -> Path:
    (tmp / "checked.yaml").write_text(
        yaml.safe_dump(
            {"name": "checked", "description": "input and output", "on_guard_error": "closed"}
        )
    )
    raw: dict[str, Any] = {
        "default_guard": "nemotron",
        "guards": {"nemotron": {"type": "sglang", "base_url": guard}},
        "upstreams": {
            "double": {"type": "openai", "base_url": upstream + "/v1", "api_key": "sk-up"}
        },
        "routes": [{"name": "default", "upstream": "double", "policy": "checked.yaml"}],
        "auth": {"tenants": {"bench": {"keys": [KEY]}}},
        "audit": {"enabled": False},
        "logging": {"requests": False},
    }
    if redis_url is not None:
        raw["limits"] = {"redis_url": redis_url, "tenants": {"bench": LIMITS}}
    if redis_url is not None and cache:
        raw["cache"] = {"redis_url": redis_url}
    path = tmp / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def body(text: str) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})


def command_calls(port: int) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in redis_info(port, "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name = line[len("cmdstat_") : line.index(":")]
            calls[name] = int(line.split("calls=")[1].split(",")[0])
    return calls


def wait_keys(port: int, n: int) -> None:
    """The peer's verdicts are written in the background, just after its responses."""
    deadline = time.monotonic() + 30
    while True:
        for line in redis_info(port, "keyspace").splitlines():
            if line.startswith("db0:") and int(line.split("keys=")[1].split(",")[0]) >= n:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the peer's verdicts never reached Redis")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--guard-delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    n = args.requests
    redis = RedisServer(binary)
    redis.start()
    results: dict[str, dict[str, Measured]] = {}
    redis_calls: dict[str, dict[str, int]] = {}
    try:
        with (
            tempfile.TemporaryDirectory() as tmpdir,
            upstream_double() as up,
            guard_double(args.guard_delay_ms) as guard,
        ):
            tmp = Path(tmpdir)
            log = (tmp / "gateways.log").open("wb")
            with (
                gateway(config(tmp, "off", up.url, guard.url, None, cache=False), log) as off,
                gateway(
                    config(tmp, "limits", up.url, guard.url, redis.url, cache=False), log
                ) as limits,
                gateway(
                    config(tmp, "shared", up.url, guard.url, redis.url, cache=True), log
                ) as shared,
                gateway(config(tmp, "peer", up.url, guard.url, redis.url, cache=True), log) as peer,
            ):
                measured = {"off": off, "limits": limits, "shared": shared}
                clients = {name: httpx.Client(timeout=30) for name in (*measured, "peer")}
                rng = random.Random(12)

                def post(name: str, gw: Child, text: str) -> float:
                    url = gw.url + "/v1/chat/completions"
                    sample = chat(clients[name], url, body(text), HEADERS)
                    assert sample.status == 200, (name, sample.status)
                    assert sample.headers["x-guardline-input"] == "safe"
                    if name != "off":
                        assert "x-ratelimit-limit-requests" in sample.headers
                        assert "x-guardline-limits" not in sample.headers  # not degraded
                    return sample.total_ms

                def phase(label: str, texts: list[str]) -> None:
                    out = {name: Measured() for name in measured}
                    cpu0 = {name: gw.cpu_s() for name, gw in measured.items()}
                    calls0 = command_calls(redis.port)
                    order = list(measured.items())
                    for text in texts:
                        rng.shuffle(order)
                        for name, gw in order:
                            out[name].samples.append(post(name, gw, text))
                    for name, gw in measured.items():
                        out[name].cpu_s = gw.cpu_s() - cpu0[name]
                    calls1 = command_calls(redis.port)
                    redis_calls[label] = {
                        cmd: calls1.get(cmd, 0) - calls0.get(cmd, 0)
                        for cmd in ("evalsha", "get", "set")
                    }
                    results[label] = out

                for i in range(args.warmup):  # connections, code paths, the LRU
                    for name, gw in measured.items():
                        post(name, gw, "Suggest a name for a pet turtle.")
                        post(name, gw, f"warm-up question {i}")
                phase("repeat", ["Suggest a name for a pet turtle."] * n)
                phase("unique", [f"What is {i} plus {i + 1}?" for i in range(n)])
                peer_texts = [f"Name a river longer than {i} km." for i in range(n)]
                keys_before = int(
                    next(
                        (
                            line.split("keys=")[1].split(",")[0]
                            for line in redis_info(redis.port, "keyspace").splitlines()
                            if line.startswith("db0:")
                        ),
                        "0",
                    )
                )
                for text in peer_texts:
                    post("peer", peer, text)
                wait_keys(redis.port, keys_before + 2 * n)
                phase("peer", peer_texts)
                for client in clients.values():
                    client.close()
    finally:
        redis.stop()
    print(
        f"{n} measured requests per gateway and phase (after {args.warmup} warm-up rounds), "
        f"off, limits and shared interleaved; guard double delay {args.guard_delay_ms:g} ms\n"
    )
    print(
        "| phase | gateway | p50 ms | p99 ms | added p50 ms | CPU ms/req "
        "| EVALSHA / GET / SET per round |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, out in results.items():
        base = statistics.median(out["off"].samples)
        c = redis_calls[label]
        for name, m in out.items():
            p50 = statistics.median(m.samples)
            calls = (
                f"{c['evalsha'] / n:.2f} / {c['get'] / n:.2f} / {c['set'] / n:.2f}"
                if name == "shared"
                else ""
            )
            print(
                f"| {label} | {name} | {p50:.3f} | {pct(m.samples, 99):.3f} | {p50 - base:+.3f} "
                f"| {m.cpu_s * 1000 / n:.3f} | {calls} |"
            )


if __name__ == "__main__":
    main()
