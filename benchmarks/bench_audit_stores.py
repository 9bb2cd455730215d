"""Benchmark: the audit writer on SQLite vs PostgreSQL, and metric updates in one process vs
multiprocess mode (issue 12, "Many replicas, one gateway").

Part 1, audit writer. The real `AuditWriter` in front of each store: a SQLite file in a
temporary directory, and a real PostgreSQL (a throw-away cluster on 127.0.0.1 from
tests/postgres_server.py, fsync off, so both stores skip the disk flush: SQLite runs WAL with
synchronous=NORMAL). Each round submits `--records` records to one writer as fast as it can,
then waits for them to be written; the two stores alternate, in a shuffled order each round
(fixed seed), so machine noise hits both.

  submit p50 / p99   cost of one `submit()` on the calling thread (the request path's cost)
  records/s          records written per second of the round (submit start to flush done)

Part 2, metrics. `GatewayMetrics.observe_request` + `observe_verdict` (what a request costs
in metrics) timed in child processes, one in ordinary in-memory mode, one with
PROMETHEUS_MULTIPROC_DIR set (memory-mapped files: `guardline serve --workers N`), alternating
per round; then the cost of rendering /metrics once in each mode.

Run: .venv/bin/python benchmarks/bench_audit_stores.py [--records 5000] [--rounds 5]
                                                        [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.audit.record import AuditRecord
from proxy.audit.storage import AuditStorage, open_audit_store
from proxy.audit.writer import AuditWriter
from tests.postgres_server import PostgresServer, find_bin_dir

ROOT = Path(__file__).resolve().parent.parent

METRICS_CHILD = """
import json, sys, time
from proxy.observability.metrics import GatewayMetrics
calls = int(sys.argv[1])
m = GatewayMetrics()
for i in range(1000):  # warm the label caches
    m.observe_request("default", 200, 0.01)
    m.observe_verdict("kids", "input", "safe")
costs = []
for i in range(calls):
    t = time.perf_counter_ns()
    m.observe_request("default", 200 if i % 10 else 400, 0.01)
    unsafe = i % 10 == 0
    m.observe_verdict("kids", "input", "unsafe" if unsafe else "safe", ("Violence",) * unsafe)
    costs.append(time.perf_counter_ns() - t)
costs.sort()
t = time.perf_counter_ns()
body, _ = m.render()
render_ns = time.perf_counter_ns() - t
print(json.dumps({"p50": costs[len(costs) // 2], "p99": costs[int(len(costs) * 0.99)],
                  "render_ms": render_ns / 1e6, "bytes": len(body)}))
"""


def _record(i: int) -> AuditRecord:
    return AuditRecord(
        time=time.time(),
        request_id=f"req-{i}",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        tenant="acme",
        route="default",
        policy="kids-education@1a2b3c4d",
        stage="input",
        verdict="safe" if i % 10 else "unsafe",
        categories=() if i % 10 else ("Violence",),
        score=0.1,
        guard="nemotron",
        guard_latency_ms=12.0,
        degraded=False,
        content_hash="ab" * 32,
    )


def _writer_round(store: AuditStorage, records: int) -> tuple[float, float, float]:
    writer = AuditWriter(store, queue_size=records + 10)
    batch = [_record(i) for i in range(records)]
    costs: list[int] = []
    started = time.perf_counter()
    for record in batch:
        t = time.perf_counter_ns()
        writer.submit(record)
        costs.append(time.perf_counter_ns() - t)
    assert writer.flush(300)
    elapsed = time.perf_counter() - started
    assert writer.written == records and writer.dropped == 0
    writer.close(60)
    costs.sort()
    return costs[len(costs) // 2] / 1000, costs[int(len(costs) * 0.99)] / 1000, records / elapsed


def audit_part(records: int, rounds: int) -> None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="guardline-bench-audit-"))
    try:
        stores: dict[str, AuditStorage] = {
            "sqlite": open_audit_store(work / "audit.sqlite3", readonly=False),
            "postgres": open_audit_store(server.create_database(), readonly=False),
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in stores}
        order = list(stores)
        rng = random.Random(12)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                results[name].append(_writer_round(stores[name], records))
        print(f"audit writer: {records} records x {rounds} rounds per store")
        print("| store | submit p50 µs | submit p99 µs | records/s (median of rounds) |")
        print("|---|---:|---:|---:|")
        for name, rows in results.items():
            p50 = statistics.median(r[0] for r in rows)
            p99 = statistics.median(r[1] for r in rows)
            rate = statistics.median(r[2] for r in rows)
            print(f"| {name} | {p50:.2f} | {p99:.2f} | {rate:,.0f} |")
        for store in stores.values():
            store.close()
    finally:
        server.destroy()
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


def _metrics_child(calls: int, multiprocess_dir: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    done = subprocess.run(
        [sys.executable, "-c", METRICS_CHILD, str(calls)],
        capture_output=True, text=True, check=True, cwd=ROOT, env=env,
    )  # fmt: skip
    result: dict[str, float] = json.loads(done.stdout)
    return result


def metrics_part(calls: int, rounds: int) -> None:
    results: dict[str, list[dict[str, float]]] = {"in-process": [], "multiprocess": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="guardline-bench-metrics-") as shared:
            for mode in ("in-process", "multiprocess"):
                directory = shared if mode == "multiprocess" else None
                results[mode].append(_metrics_child(calls, directory))
    print(f"\nmetrics: observe_request + observe_verdict, {calls} calls x {rounds} rounds")
    print("| mode | p50 µs/request | p99 µs/request | render /metrics ms |")
    print("|---|---:|---:|---:|")
    for mode, rows in results.items():
        p50 = statistics.median(r["p50"] for r in rows) / 1000
        p99 = statistics.median(r["p99"] for r in rows) / 1000
        render = statistics.median(r["render_ms"] for r in rows)
        print(f"| {mode} | {p50:.2f} | {p99:.2f} | {render:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    audit_part(args.records, args.rounds)
    metrics_part(args.calls, args.rounds)


if __name__ == "__main__":
    main()
