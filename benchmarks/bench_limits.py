"""Benchmark: what per-tenant limits add to a request through the real gateway (issue 12,
"Performance": added p50 <= 0.5 ms with Redis limits on, CPU per request recorded).

Processes: a real `redis-server` (free port, no persistence), the OpenAI upstream double, and
three `guardline serve` gateways, identical (same tenants and keys, a route whose policy
checks nothing, so only the limits layer differs) except for `limits:`:

  off     no limits
  local   the tenant has requests_per_minute, tokens_per_minute and concurrent_requests,
          counted in process
  redis   the same three limits, counted in the redis-server

The limits are set high enough never to refuse (the measured path is the admitted request:
acquire, headers, release). Requests are sequential on keep-alive connections, interleaved
the three in a shuffled order each round (fixed seed) so all see the same machine load and
none always follows the same one.

  p50 / p99       client-observed latency per gateway
  added p50       p50(variant) - p50(off)
  CPU ms/req      the gateway process's user+system CPU per measured request (and Redis's)
  Redis calls/req EVALSHA calls per request counted by Redis (INFO commandstats): one before
                  the request runs (the hot path; it also carries the releases queued since
                  the last call), plus the timer flushes of releases when no request came
                  within 50 ms (off the request path)
  PING floor      p50 of a bare redis-py asyncio PING from this process: one round trip

Run: .venv/bin/python benchmarks/bench_limits.py [--requests 1000] [--warmup 100]
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moderation_client import chat
from moderation_procs import Child, gateway, upstream_double

from tests.redis_server import RedisServer

KEY = "sk-bench-tenant-key"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
LIMITS = {
    "requests_per_minute": 10_000_000,
    "tokens_per_minute": 10_000_000_000,
    "concurrent_requests": 10_000,
}


@dataclass
class Variant:
    name: str
    limits: dict[str, Any] | None
    samples: list[float] = field(default_factory=list)
    cpu_s: float = 0.0


def config(tmp: Path, upstream: str, limits: dict[str, Any] | None) -> Path:
    (tmp / "off.yaml").write_text(
        "name: passthrough\ndescription: no checks\ninput: {enabled: false}\n"
        "output: {enabled: false}\non_guard_error: open\n"
    )
    raw: dict[str, Any] = {
        "default_guard": "remote",
        "guards": {"remote": {"type": "sglang", "base_url": "http://127.0.0.1:9"}},
        "upstreams": {
            "double": {"type": "openai", "base_url": upstream + "/v1", "api_key": "sk-up"}
        },
        "routes": [{"name": "default", "upstream": "double", "policy": "off.yaml"}],
        "auth": {"tenants": {"bench": {"keys": [KEY]}}},
        "audit": {"enabled": False},
        "logging": {"requests": False},
    }
    if limits is not None:
        raw["limits"] = limits
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def redis_info(port: int, section: str) -> str:
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while True:
            data += s.recv(65536)
            header, _, rest = data.partition(b"\r\n")
            if header.startswith(b"$") and len(rest) >= int(header[1:]):
                return rest.decode()


def evalsha_calls(port: int) -> int:
    for line in redis_info(port, "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def redis_py_ping_p50_ms(url: str, n: int = 1000) -> float:
    """The floor: one redis-py asyncio PING round trip, from this process, on this machine."""
    import asyncio

    from redis.asyncio import Redis

    async def run() -> float:
        client = Redis.from_url(url)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            await client.ping()
            samples.append((time.perf_counter() - start) * 1000)
        await client.aclose()
        return statistics.median(samples)

    return asyncio.run(run())


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    redis = RedisServer(binary)
    redis.start()
    redis_pid = redis.proc.pid if redis.proc else 0
    try:
        with tempfile.TemporaryDirectory() as tmpdir, upstream_double() as up:
            tmp = Path(tmpdir)
            variants = [
                Variant("off", None),
                Variant("local", {"tenants": {"bench": LIMITS}}),
                Variant("redis", {"redis_url": redis.url, "tenants": {"bench": LIMITS}}),
            ]
            log = (tmp / "gateways.log").open("wb")
            with (
                gateway(config(tmp, up.url, variants[0].limits), log) as g0,
                gateway(config(tmp, up.url, variants[1].limits), log) as g1,
                gateway(config(tmp, up.url, variants[2].limits), log) as g2,
            ):
                gws: list[Child] = [g0, g1, g2]
                clients = [httpx.Client(timeout=30) for _ in gws]
                headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
                for _ in range(args.warmup):
                    for client, gw in zip(clients, gws, strict=True):
                        assert (
                            chat(client, gw.url + "/v1/chat/completions", BODY, headers).status
                            == 200
                        )
                calls0 = evalsha_calls(redis.port)
                cpu0 = [gw.cpu_s() for gw in gws]
                redis_cpu0 = Child("", redis_pid).cpu_s()
                rng = random.Random(12)
                order = list(zip(clients, gws, variants, strict=True))
                for _ in range(args.requests):
                    rng.shuffle(order)
                    for client, gw, v in order:
                        sample = chat(client, gw.url + "/v1/chat/completions", BODY, headers)
                        assert sample.status == 200, sample.status
                        if v.limits is not None:
                            assert "x-ratelimit-limit-requests" in sample.headers
                            assert "x-guardline-limits" not in sample.headers
                        v.samples.append(sample.total_ms)
                for gw, v, c0 in zip(gws, variants, cpu0, strict=True):
                    v.cpu_s = gw.cpu_s() - c0
                redis_cpu = Child("", redis_pid).cpu_s() - redis_cpu0
                calls = evalsha_calls(redis.port) - calls0
                ping_ms = redis_py_ping_p50_ms(redis.url)
                for client in clients:
                    client.close()
    finally:
        redis.stop()
    n = args.requests
    base = statistics.median(variants[0].samples)
    print(f"{n} measured requests per gateway (after {args.warmup} warm-up), interleaved\n")
    print("| gateway | p50 ms | p99 ms | added p50 ms | CPU ms/req |")
    print("|---|---:|---:|---:|---:|")
    for v in variants:
        p50 = statistics.median(v.samples)
        print(
            f"| {v.name} | {p50:.3f} | {pct(v.samples, 99):.3f} | {p50 - base:+.3f} | "
            f"{v.cpu_s * 1000 / n:.3f} |"
        )
    print(
        f"\nredis-server CPU ms/req: {redis_cpu * 1000 / n:.3f}; "
        f"EVALSHA calls per request: {calls / n:.2f}; "
        f"redis-py PING round trip p50 (the floor of one call): {ping_ms:.3f} ms"
    )


if __name__ == "__main__":
    main()
