"""Benchmark: what observability (tracing + metrics + audit) adds to a moderated request through
the real gateway, and whether the gateway's self-reported overhead matches what a client sees
(issue 5 "Performance").

Processes (benchmarks/moderation_procs.py): the SGLang guard double at a fixed latency, the
OpenAI upstream double (fixed delay before it answers), and two gateways (`guardline serve`)
on the same guard and upstream, identical except for their config's switches:

  off   tracing.enabled, metrics.enabled, audit.enabled all false
  on    all three on: spans for every request (no exporter unless OTEL_* says so; `--otlp`
        exports them over OTLP/HTTP to a receiver in this process), Prometheus metrics,
        the SQLite audit trail (two records per request)
  on-late  as on, with `tracing.late_spans: true` (spans recorded after the response;
        `--variants off on on-late` compares the two span paths)

Both log one JSON request line per request (logging is not one of the three switches). Each
request is a full moderation (serial input check, upstream call, output check) with a unique
prompt, so the verdict cache never answers. Requests are sequential on keep-alive connections
and interleaved direct, off, on, direct, off, on... so that all see the same machine load.

  added(on vs off)  p50(on) - p50(off): the target is <= 0.3 ms
  external added    p50 of (gateway total - the paired direct upstream total) - 2 x p50 of the
                    bare guard round trip: what the gateway costs a client, measured outside
  self-reported     p50 of Server-Timing `overhead`: the target is that both agree within 0.5 ms
                    (the external figure also holds the client-gateway HTTP hop, which the
                    gateway cannot see)
  CPU ms/req        the gateway process's user+system CPU per measured request

Run: .venv/bin/python benchmarks/bench_observability_e2e.py [--requests 400] [--warmup 40]
     [--guard-ms 5] [--upstream-ms 20] [--otlp] [--compare REV]

`--compare REV` also starts the same variants from commit REV (`on@<rev>`, ...), measured in
the same rounds: a before/after comparison on the same machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moderation_client import Series, chat, guard_round_trip, server_timing
from moderation_procs import ROOT, Child, gateway, guard_double, snapshot, upstream_double

PROMPT = "I'm planning a hiking trip in the Alps in late September. What gear should we bring?"
# Variant name -> the switched-on parts. "off" and "on" are the comparison; the single-part
# variants (`--variants off tracing metrics audit on`) show where a difference comes from.
PARTS = ("tracing", "metrics", "audit")
VARIANTS: dict[str, tuple[str, ...]] = {
    "off": (),
    "tracing": ("tracing",),
    "metrics": ("metrics",),
    "audit": ("audit",),
    "on": PARTS,
    # All three on, spans recorded after the response (`tracing.late_spans`, opt-in).
    "on-late": (*PARTS, "late"),
}


PASS_PREFIX = "/pass"  # the route without guard checks (same gateway, same observability)


@dataclass
class Variant:
    name: str
    guard_calls: int  # guard round trips on the path (2 on the full route, 0 on /pass)
    total: Series = field(default_factory=Series)
    external: Series = field(default_factory=Series)  # total - paired direct
    overhead: Series = field(default_factory=Series)  # Server-Timing overhead
    timing: dict[str, Series] = field(default_factory=dict)  # every Server-Timing entry
    direct: Series = field(default_factory=Series)  # the paired direct upstream totals
    cpu_ms: float = 0.0


def write_config(folder: Path, label: str, guard_url: str, upstream_url: str) -> Path:
    name = _variant(label)
    (folder / "audit").mkdir(exist_ok=True)
    policy, passing = folder / "policy.yaml", folder / "pass.yaml"
    for path, enabled in ((policy, True), (passing, False)):
        path.write_text(
            yaml.safe_dump(
                {
                    "name": path.stem,
                    "description": "observability benchmark",
                    "input": {"enabled": enabled, "parallel": False},
                    "output": {"enabled": enabled},
                    "on_guard_error": "closed",
                }
            )
        )
    parts = VARIANTS[name]
    config = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "default_guard": "g",
        "guards": {"g": {"type": "sglang", "base_url": guard_url, "timeout_ms": 3000}},
        "upstreams": {"up": {"type": "openai", "base_url": f"{upstream_url}/v1"}},
        "routes": [
            {"name": "pass", "path_prefix": PASS_PREFIX, "upstream": "up", "policy": str(passing)},
            {"name": "bench", "upstream": "up", "policy": str(policy)},
        ],
        "tracing": {
            "enabled": "tracing" in parts,
            **({"late_spans": True} if "late" in parts else {}),
        },
        "metrics": {"enabled": "metrics" in parts},
        # Not in the policy's folder: its watcher would see every audit write as a change.
        "audit": {
            "enabled": "audit" in parts,
            "path": str(folder / "audit" / f"{_file(label)}.sqlite3"),
        },
    }
    path = folder / f"config-{_file(label)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _variant(label: str) -> str:
    """`on@abc1234` (a variant of another commit, `--compare`) -> `on`."""
    return label.partition("@")[0]


def _file(label: str) -> str:
    return label.replace("@", "-")


def _body(i: int) -> bytes:
    prompt = f"{PROMPT} (trip {i}, {uuid.uuid4().hex[:8]})"
    return orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": prompt}]})


@contextlib.contextmanager
def otlp_receiver() -> Iterator[str]:
    """A real OTLP/HTTP receiver (the tests' one) in a thread of this process."""
    sys.path.insert(0, str(ROOT))
    from tests.observability.test_otlp_export import Receiver

    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(args: argparse.Namespace, folder: Path, otlp_url: str | None) -> dict[str, Any]:
    log = (Path(args.log) if args.log else folder / "gateways.log").open("wb")
    with contextlib.ExitStack() as stack:
        guard = stack.enter_context(guard_double(args.guard_ms))
        upstream = stack.enter_context(upstream_double())
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url} if otlp_url else {}
        gateways: dict[str, Child] = {}
        variants = list(args.variants)
        roots = dict.fromkeys(variants, ROOT)
        if args.compare:
            # The same variants from another commit, in the same run: before vs after.
            code = folder / "compare"
            revision = snapshot(code, args.compare)
            roots.update({f"{name}@{revision}": code for name in args.variants})
            variants = list(roots)
        for name in variants:
            config = write_config(folder, name, guard.url, upstream.url)
            extra = env if "tracing" in VARIANTS[_variant(name)] else {}
            gateways[name] = stack.enter_context(gateway(config, log, env=extra, root=roots[name]))
        rtt = guard_round_trip(guard.url, PROMPT, args.requests // 2, args.warmup)

        headers = {
            "content-type": "application/json",
            "authorization": "Bearer sk-bench",
            "x-double-delay-ms": str(args.upstream_ms),
        }
        targets = [*variants, *(f"{n}{PASS_PREFIX}" for n in variants)]
        clients = {n: stack.enter_context(httpx.Client(timeout=30)) for n in ("direct", *targets)}
        urls = {
            "direct": f"{upstream.url}/v1/chat/completions",
            **{n: f"{gateways[n].url}/v1/chat/completions" for n in variants},
            **{f"{n}{PASS_PREFIX}": f"{gateways[n].url}{PASS_PREFIX}/v1/chat/completions"
               for n in variants},
        }  # fmt: skip
        results = {n: Variant(n, 0 if n.endswith(PASS_PREFIX) else 2) for n in targets}
        cpu_start: dict[str, float] = {}
        rng = random.Random(5)
        for i in range(args.warmup + args.requests):
            if i == args.warmup:
                cpu_start = {n: gateways[n].cpu_s() for n in variants}
            body = _body(i)
            # A new order every round: no variant always runs right after another one (whose
            # after-response work, e.g. the audit thread, would otherwise always hit it).
            order = ["direct", *targets]
            rng.shuffle(order)
            samples = {name: chat(clients[name], urls[name], body, headers) for name in order}
            direct = samples["direct"]
            for name in targets:
                sample = samples[name]
                if sample.status != 200:
                    raise RuntimeError(f"{name} answered {sample.status}")
                if i < args.warmup:
                    continue
                variant = results[name]
                variant.total.add(sample.total_ms)
                variant.external.add(sample.total_ms - direct.total_ms)
                reported = server_timing(sample.headers.get("server-timing"))
                variant.overhead.add(reported["overhead"])
                for key, value in reported.items():
                    variant.timing.setdefault(key, Series()).add(value)
                variant.direct.add(direct.total_ms)
        for name in variants:
            cpu = gateways[name].cpu_s() - cpu_start[name]
            results[name].cpu_ms = cpu * 1000.0 / args.requests
    return {"rtt": rtt, "results": results}  # cpu_ms: per round (full + /pass request)


def _f(value: float) -> str:
    return f"{value:.2f}"


def report(args: argparse.Namespace, measured: dict[str, Any]) -> str:
    rtt: Series = measured["rtt"]
    results: dict[str, Variant] = measured["results"]
    lines = [
        f"guard double {args.guard_ms} ms (bare round trip p50 {_f(rtt.p50)} ms), upstream "
        f"double {args.upstream_ms} ms, {args.requests} requests per variant"
        + (", spans exported over OTLP/HTTP" if args.otlp else ", spans not exported"),
        "",
        "| variant | total p50 ms | p90 | p99 | external added p50 ms | Server-Timing overhead "
        "p50 ms | p90 | external - self-reported ms | gateway CPU ms per full + pass |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in results.values():
        external = v.external.p50 - v.guard_calls * rtt.p50
        cpu = _f(v.cpu_ms) if v.cpu_ms else ""
        lines.append(
            f"| {v.name} | {_f(v.total.p50)} | {_f(v.total.p90)} | {_f(v.total.p99)} | "
            f"{_f(external)} | {_f(v.overhead.p50)} | {_f(v.overhead.p90)} | "
            f"{_f(external - v.overhead.p50)} | {cpu} |"
        )
    lines += ["", "Server-Timing p50 ms (as the gateway measured) and the direct upstream p50:", ""]
    for v in results.values():
        parts = ", ".join(f"{k} {_f(series.p50)}" for k, series in v.timing.items())
        lines.append(f"- {v.name}: {parts}; direct upstream {_f(v.direct.p50)}")
    if "off" not in results or "on" not in results:
        return "\n".join(lines)
    lines.append("")
    for suffix, label in (("", "full moderation"), (PASS_PREFIX, "no guard checks")):
        off, on = results["off" + suffix], results["on" + suffix]
        paired = statistics.median(
            a - b for a, b in zip(on.total.values, off.total.values, strict=True)
        )
        lines.append(
            f"- added by tracing + metrics + audit, {label}: p50(on) - p50(off) = "
            f"{_f(on.total.p50 - off.total.p50)} ms; median of paired differences "
            f"{_f(paired)} ms; self-reported overhead p50 "
            f"{_f(on.overhead.p50 - off.overhead.p50)} ms more"
        )
    more_cpu = results["on"].cpu_ms - results["off"].cpu_ms
    lines.append(f"- gateway CPU: {_f(more_cpu)} ms more per round (a full and a /pass request)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--guard-ms", type=float, default=5.0)
    parser.add_argument("--upstream-ms", type=int, default=20)
    parser.add_argument("--otlp", action="store_true", help="export spans to a local receiver")
    parser.add_argument("--log", help="keep the gateways' output in this file")
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run the variants from this commit (a snapshot), side by side in the run",
    )
    parser.add_argument(
        "--variants", nargs="+", default=["off", "on"], choices=list(VARIANTS), metavar="V"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as tmp, contextlib.ExitStack() as stack:
        url = stack.enter_context(otlp_receiver()) if args.otlp else None
        measured = run(args, Path(tmp), url)
    print(report(args, measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
