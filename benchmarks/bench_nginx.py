"""Benchmark: the nginx hop of deploy/nginx.conf in front of three replicas, with a new
connection per request to the replicas (as deployed) and with a connection pool.

deploy/nginx.conf opens a new connection to a replica for every request, so a draining
replica's failure is always a refused connect, which is safe to retry (docs/deploy.md,
"Behind nginx: what is retried"). This measures what that choice costs against nginx
keeping pooled connections (`keepalive 16` added, nothing else changed), and what the hop
costs at all against calling the replicas directly.

Processes: the OpenAI upstream double, three `guardline serve` replicas whose policy checks
nothing (so the proxy hop is what differs), and two real nginx running the deployed file
(replica addresses and listen port rewritten, tests/deploy/nginx_server.py), one of them with
the pool. Requests are sequential on keep-alive client connections, the three targets in a
shuffled order each round (fixed seed) so all see the same machine load:

  direct     a replica itself (round robin over the three)
  nginx      deploy/nginx.conf as shipped: a new upstream connection per request
  nginx+pool the same with `keepalive 16` in the upstream block

  p50 / p99       client-observed latency
  vs direct       p50(target) - p50(direct): what the hop adds
  nginx CPU ms/req the nginx processes' (master + workers) user+system CPU per request

Run: .venv/bin/python benchmarks/bench_nginx.py [--requests 1000] [--warmup 100]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moderation_client import chat
from moderation_procs import Child, gateway, upstream_double

from tests.deploy.nginx_server import Nginx

BODY = b'{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
HEADERS = {"content-type": "application/json"}
POOL = "        keepalive 16;\n"


@dataclass
class Target:
    name: str
    urls: list[str]
    samples: list[float] = field(default_factory=list)
    turn: int = 0

    def next_url(self) -> str:
        self.turn += 1
        return self.urls[self.turn % len(self.urls)] + "/v1/chat/completions"


def config(tmp: Path, upstream: str) -> Path:
    (tmp / "off.yaml").write_text(
        "name: passthrough\ndescription: no checks\ninput: {enabled: false}\n"
        "output: {enabled: false}\non_guard_error: open\n"
    )
    raw = {
        "default_guard": "remote",
        "guards": {"remote": {"type": "sglang", "base_url": "http://127.0.0.1:9"}},
        "upstreams": {
            "double": {"type": "openai", "base_url": upstream + "/v1", "api_key": "sk-up"}
        },
        "routes": [{"name": "default", "upstream": "double", "policy": "off.yaml"}],
        "audit": {"enabled": False},
        "logging": {"requests": False},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_pool(nginx: Nginx) -> None:
    anchor = "    }\n\n    server {"
    assert anchor in nginx.text
    nginx.text = nginx.text.replace(anchor, POOL + anchor, 1)


def nginx_cpu_s(nginx: Nginx) -> float:
    """CPU seconds of the nginx master and its workers (children of the master)."""
    assert nginx.proc is not None
    pids = [nginx.proc.pid]
    children = Path(f"/proc/{nginx.proc.pid}/task/{nginx.proc.pid}/children")
    pids += [int(p) for p in children.read_text().split()]
    return sum(Child("", pid).cpu_s() for pid in pids)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir, upstream_double() as up:
        tmp = Path(tmpdir)
        path = config(tmp, up.url)
        log = (tmp / "replicas.log").open("wb")
        with gateway(path, log) as r1, gateway(path, log) as r2, gateway(path, log) as r3:
            ports = [int(r.url.rsplit(":", 1)[1]) for r in (r1, r2, r3)]
            plain = Nginx(tmp / "nginx", ports)
            pooled = Nginx(tmp / "nginx-pool", ports)
            with_pool(pooled)
            plain.start()
            pooled.start()
            try:
                targets = [
                    Target("direct", [r1.url, r2.url, r3.url]),
                    Target("nginx", [plain.url]),
                    Target("nginx+pool", [pooled.url]),
                ]
                clients = {t.name: httpx.Client(timeout=30) for t in targets}
                for _ in range(args.warmup):
                    for t in targets:
                        assert chat(clients[t.name], t.next_url(), BODY, HEADERS).status == 200
                cpu0 = {"nginx": nginx_cpu_s(plain), "nginx+pool": nginx_cpu_s(pooled)}
                rng = random.Random(7)
                order = list(targets)
                for _ in range(args.requests):
                    rng.shuffle(order)
                    for t in order:
                        sample = chat(clients[t.name], t.next_url(), BODY, HEADERS)
                        assert sample.status == 200, sample.status
                        t.samples.append(sample.total_ms)
                cpu = {
                    "nginx": nginx_cpu_s(plain) - cpu0["nginx"],
                    "nginx+pool": nginx_cpu_s(pooled) - cpu0["nginx+pool"],
                }
                for client in clients.values():
                    client.close()
            finally:
                plain.stop()
                pooled.stop()
    n = args.requests
    base = statistics.median(targets[0].samples)
    print(f"{n} measured requests per target (after {args.warmup} warm-up), interleaved\n")
    print("| target | p50 ms | p99 ms | vs direct p50 ms | nginx CPU ms/req |")
    print("|---|---:|---:|---:|---:|")
    for t in targets:
        p50 = statistics.median(t.samples)
        nginx_cpu = f"{cpu[t.name] * 1000 / n:.3f}" if t.name in cpu else "-"
        print(
            f"| {t.name} | {p50:.3f} | {pct(t.samples, 99):.3f} | {p50 - base:+.3f} | "
            f"{nginx_cpu} |"
        )


if __name__ == "__main__":
    main()
