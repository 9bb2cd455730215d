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

`--compare REV` adds a fourth gateway, `redis@REV`: the same Redis limits served by the code
of commit REV (extracted with `git archive`) with a redis-server of its own (so calls and Redis
CPU per request are each gateway's own), measured in the same shuffled rounds, so machine
noise hits both sides of the comparison alike.

The store alone (no gateway, no HTTP): `--store-calls N` runs N sequential acquire + release
pairs of RedisStore against the same redis-server in a fresh process per tree (this tree, and
REV with --compare), alternating twice, and prints wall and CPU microseconds per acquire,
Redis's own time per script call (INFO commandstats), and, in a second process, the p50 of
an acquire and of a PING each after an idle gap of 2 and 10 ms (as a gateway is between
sequential requests: the wake-up of both processes counts); `--profile` adds a cProfile of
this tree's loop (the top functions by own time).

Run: .venv/bin/python benchmarks/bench_limits.py [--requests 1000] [--warmup 100]
       [--compare REV] [--store-calls 3000] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
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
from moderation_procs import ROOT, Child, gateway, snapshot, upstream_double

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


def server_cpu_s(server: RedisServer) -> float:
    return Child("", server.proc.pid if server.proc else 0).cpu_s()


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


# Run in a fresh interpreter whose PYTHONPATH is the tree under test: argv url, calls, profile.
STORE_LOOP = """
import asyncio, cProfile, pstats, sys, time
from proxy.limits.spec import Limits
from proxy.limits.store import RedisStore

url, calls, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]  # loop, profile or idle
profile = mode == "profile"
scopes = [("loop", Limits(requests=10_000_000, tokens=10_000_000_000, concurrent=10_000))]

async def run() -> None:
    store = RedisStore(url, prefix="loop", timeout_s=0.25, lease_ms=60_000)
    for i in range(200):  # warm-up: connection, script cache
        await store.acquire(scopes, f"w{i}")
        store.release(scopes, f"w{i}", [10])
    if mode == "idle":
        await idle(store)
        return
    prof = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    for i in range(calls):
        await store.acquire(scopes, f"m{i}")
        store.release(scopes, f"m{i}", [10])
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{wall * 1e6 / calls:.1f} {cpu * 1e6 / calls:.1f}")
    await store.aclose()
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(20)

async def idle(store) -> None:
    # After an idle gap (as between a gateway's requests): the wake-up on both sides counts.
    parts = []
    for gap in (0.002, 0.010):
        acq, ping = [], []
        for i in range(200):
            await asyncio.sleep(gap)
            start = time.perf_counter()
            await store.acquire(scopes, f"g{gap}-{i}")
            acq.append(time.perf_counter() - start)
            store.release(scopes, f"g{gap}-{i}", [10])
            await asyncio.sleep(gap)
            start = time.perf_counter()
            await store.ping()
            ping.append(time.perf_counter() - start)
        acq.sort(), ping.sort()
        a, p = acq[100] * 1e6, ping[100] * 1e6
        parts.append(f"{gap * 1000:g} ms: acquire {a:.0f} / PING {p:.0f}")
    print("; ".join(parts))
    await store.aclose()

asyncio.run(run())
"""


@dataclass
class StoreLoop:
    wall_us: float  # per acquire + release, back to back
    cpu_us: float
    script_us: float  # Redis's own time per EVALSHA (INFO commandstats usec_per_call)
    idle: str  # p50 microseconds of an acquire and of a PING after idle gaps
    listing: str  # the cProfile listing, when profiled


def redis_command(port: int, line: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(line.encode() + b"\r\n")
        return s.recv(65536)


def store_loop(root: Path, server: RedisServer, calls: int, profile: bool = False) -> StoreLoop:
    """RedisStore from `root`'s code, alone, in a fresh process."""
    assert redis_command(server.port, "CONFIG RESETSTAT").startswith(b"+OK")

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", STORE_LOOP, server.url, str(calls), mode],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            check=True,
            capture_output=True,
            text=True,
        )

    done = run("profile" if profile else "loop")
    wall, cpu = done.stdout.split()
    script_us = 0.0
    for line in redis_info(server.port, "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            script_us = float(line.split("usec_per_call=")[1].split(",")[0])
    listing = done.stderr.replace(str(Path(sys.prefix)), "<venv>") if profile else ""
    idle = "" if profile else run("idle").stdout.strip()
    return StoreLoop(float(wall), float(cpu), script_us, idle, listing)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--compare", metavar="REV", help="also measure commit REV's gateway")
    parser.add_argument("--store-calls", type=int, default=0, metavar="N")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile and not args.store_calls:
        args.store_calls = 3000
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    redis = RedisServer(binary)
    redis.start()
    # The compared commit's gateway gets a redis-server of its own (when --compare).
    other_redis = RedisServer(binary)
    if args.compare:
        other_redis.start()
    servers: dict[str, RedisServer] = {"redis": redis}
    try:
        with (
            tempfile.TemporaryDirectory() as tmpdir,
            upstream_double() as up,
            contextlib.ExitStack() as stack,
        ):
            tmp = Path(tmpdir)
            variants = [
                Variant("off", None),
                Variant("local", {"tenants": {"bench": LIMITS}}),
                Variant("redis", {"redis_url": redis.url, "tenants": {"bench": LIMITS}}),
            ]
            roots = [ROOT, ROOT, ROOT]
            other: Path | None = None
            if args.compare:
                other = tmp / "compare"
                commit = snapshot(other, args.compare)
                limits = {"redis_url": other_redis.url, "tenants": {"bench": LIMITS}}
                variants.append(Variant(f"redis@{commit}", limits))
                servers[variants[-1].name] = other_redis
                roots.append(other)
            if args.store_calls:
                trees = [("this tree", ROOT)] + ([(f"@{commit}", other)] if other else [])
                loops: dict[str, list[StoreLoop]] = {name: [] for name, _ in trees}
                for _ in range(2):
                    for name, root in trees:
                        loops[name].append(store_loop(root, redis, args.store_calls))
            log = (tmp / "gateways.log").open("wb")
            gws: list[Child] = [
                stack.enter_context(gateway(config(tmp, up.url, v.limits), log, root=root))
                for v, root in zip(variants, roots, strict=True)
            ]
            clients = [httpx.Client(timeout=30) for _ in gws]
            headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
            for _ in range(args.warmup):
                for client, gw in zip(clients, gws, strict=True):
                    assert (
                        chat(client, gw.url + "/v1/chat/completions", BODY, headers).status == 200
                    )
            calls0 = {name: evalsha_calls(srv.port) for name, srv in servers.items()}
            cpu0 = [gw.cpu_s() for gw in gws]
            redis_cpu0 = {name: server_cpu_s(srv) for name, srv in servers.items()}
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
            redis_cpu = {
                name: server_cpu_s(srv) - redis_cpu0[name] for name, srv in servers.items()
            }
            calls = {name: evalsha_calls(srv.port) - calls0[name] for name, srv in servers.items()}
            ping_ms = redis_py_ping_p50_ms(redis.url)
            profile = store_loop(ROOT, redis, args.store_calls, True) if args.profile else None
            for client in clients:
                client.close()
    finally:
        redis.stop()
        other_redis.stop()
    n = args.requests
    base = statistics.median(variants[0].samples)
    base_cpu = variants[0].cpu_s * 1000 / n
    print(f"{n} measured requests per gateway (after {args.warmup} warm-up), interleaved\n")
    print("| gateway | p50 ms | p99 ms | added p50 ms | CPU ms/req | added CPU ms/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants:
        p50 = statistics.median(v.samples)
        cpu = v.cpu_s * 1000 / n
        print(
            f"| {v.name} | {p50:.3f} | {pct(v.samples, 99):.3f} | {p50 - base:+.3f} | "
            f"{cpu:.3f} | {cpu - base_cpu:+.3f} |"
        )
    print()
    for name in servers:
        print(
            f"{name}: redis-server CPU ms/req {redis_cpu[name] * 1000 / n:.3f}, "
            f"EVALSHA calls per request {calls[name] / n:.2f}"
        )
    print(f"redis-py PING round trip p50 (the floor of one call): {ping_ms:.3f} ms")
    if args.store_calls:
        print(f"\nRedisStore alone, {args.store_calls} acquire + release, two alternating runs:")
        for name, runs in loops.items():
            for r in runs:
                print(
                    f"  {name}: {r.wall_us:.1f} us wall / {r.cpu_us:.1f} us CPU per acquire, "
                    f"script {r.script_us:.1f} us in Redis; after idle {r.idle} (p50 us)"
                )
    if profile is not None:
        print(
            f"\nProfiled run of this tree ({profile.wall_us:.1f} us wall / "
            f"{profile.cpu_us:.1f} us CPU per acquire):"
        )
        print(profile.listing)


if __name__ == "__main__":
    main()
