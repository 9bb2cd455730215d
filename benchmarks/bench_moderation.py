"""Benchmark: what moderation adds to a chat request's latency (issue 4 "Performance").

Three processes besides this one: the SGLang guard double at a fixed latency (15 ms, 50 ms),
the OpenAI upstream double (100 ms before it answers; streams of N chunks steered by the
`x-double-*` request headers), and the gateway (`guardline serve --config <generated>`),
whose routes each serve one scenario policy (path prefix = scenario name). The client here
sends sequential requests (concurrency 1) on keep-alive connections, alternating between
the upstream double directly and the same request through the gateway, so both see the
same machine load. "added" = gateway percentile - direct percentile.

Scenarios (targets from issue 4; G = the guard double's fixed latency):
  pass        no checks at all: the gateway's own floor          baseline
  serial      input check, then upstream; output off            added p50 <= G + 1 ms
  parallel    input check beside the upstream call (G < 100 ms) added p50 <= 1 ms
  stream-pass stream, no checks                                  baseline
  hb-burst    stream, hold-back output check, input off; the    TTFT added p50 <= G + 2 ms
              whole answer arrives at once (first window complete with the first token)
  hb-paced    stream, 40 chunks 5 ms apart, holdback_chars 100  TTFT - (direct time the
              (the first window completes ~75 ms after the      window was complete)
              first token: hold-back cannot release before it)  p50 <= G + 2 ms
  paced-pass  the same paced stream, no checks                  baseline
  hb-both     hb-burst with the serial input check on           reported
  full        input + output, non-streaming                     reported
"residual" = added (hb-paced: after the window) minus the bare guard round trip times the
guard calls on the path: what the gateway itself costs. "gateway CPU ms/req" = the gateway
process's user+system CPU time over the measured requests, divided by their number.
Prompts are unique per request (verdict cache cold); the `-warm` rows repeat one prompt, so
after warm-up every guard verdict comes from the gateway's verdict cache.

Run: .venv/bin/python benchmarks/bench_moderation.py [--requests 300] [--write-docs] (--help)
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moderation_client import (
    Sample,
    Series,
    chat,
    chat_stream,
    guard_round_trip,
    server_timing,
)
from moderation_docs import write_docs
from moderation_procs import ROOT, Child, gateway, guard_double, snapshot, upstream_double

UPSTREAM_DELAY_MS = 100
PROMPT = (
    "I'm planning a week-long hiking trip in the Alps in late September with two friends. "
    "What gear should we bring and how should we plan daily distances?"
)
SHAPES: dict[str, dict[str, str]] = {
    "json": {"x-double-delay-ms": str(UPSTREAM_DELAY_MS)},
    "burst": {
        "x-double-delay-ms": str(UPSTREAM_DELAY_MS),
        "x-double-chunks": "20",
        "x-double-chunk-delay-ms": "0",
    },
    "paced": {
        "x-double-delay-ms": str(UPSTREAM_DELAY_MS),
        "x-double-chunks": "40",
        "x-double-chunk-delay-ms": "5",
    },
}
OFF: dict[str, Any] = {"enabled": False}


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: str  # key of SHAPES
    input: dict[str, Any]
    output: dict[str, Any]
    target: str
    met: Callable[[Result, float], bool] | None = None
    warm: bool = False
    guard_calls: int = 0  # guard round trips on the measured path (for the residual)
    share: float = 1.0  # fraction of --requests (long streams take several times longer)

    @property
    def stream(self) -> bool:
        return self.shape != "json"

    @property
    def window(self) -> int:
        return int(self.output.get("holdback_chars", 400))


@dataclass
class Result:
    scenario: Scenario
    guard_ms: float
    direct: Series = field(default_factory=Series)
    gateway: Series = field(default_factory=Series)
    paired: Series = field(default_factory=Series)  # per-request gateway - direct
    after_window: Series = field(default_factory=Series)  # streams: gw TTFT - direct window
    timing: dict[str, Series] = field(default_factory=dict)  # Server-Timing entries
    verdicts: Counter[str] = field(default_factory=Counter)
    gateway_cpu_ms: float = 0.0  # the gateway process's CPU time per measured request

    def added(self, q: str) -> float:
        return float(getattr(self.gateway, q) - getattr(self.direct, q))


def _serial_met(r: Result, g: float) -> bool:
    return r.added("p50") <= g + 1


def _parallel_met(r: Result, g: float) -> bool:
    return r.added("p50") <= 1


def _ttft_met(r: Result, g: float) -> bool:
    return r.added("p50") <= g + 2


def _window_met(r: Result, g: float) -> bool:
    return r.after_window.p50 <= g + 2


HOLDBACK = {"enabled": True, "stream": "holdback", "holdback_chars": 400}
SERIAL: dict[str, Any] = {"parallel": False}
FULL: dict[str, Any] = {"enabled": True}
SCENARIOS = [
    Scenario("pass", "json", OFF, OFF, "baseline: no checks"),
    Scenario("serial", "json", SERIAL, OFF, "added p50 <= G+1", _serial_met, guard_calls=1),
    Scenario("serial-warm", "json", SERIAL, OFF, "cache-warm", warm=True),
    Scenario("parallel", "json", {"parallel": True}, OFF, "added p50 <= 1", _parallel_met),
    Scenario("stream-pass", "burst", OFF, OFF, "baseline: no checks"),
    Scenario("hb-burst", "burst", OFF, HOLDBACK, "TTFT added p50 <= G+2", _ttft_met, guard_calls=1),
    Scenario(
        "hb-paced",
        "paced",
        OFF,
        {**HOLDBACK, "holdback_chars": 100},
        "TTFT - window p50 <= G+2",
        _window_met,
        guard_calls=1,
        share=0.5,
    ),
    Scenario("paced-pass", "paced", OFF, OFF, "baseline: no checks", share=0.5),
    Scenario("hb-both", "burst", SERIAL, HOLDBACK, "reported", guard_calls=2),
    Scenario("full", "json", SERIAL, FULL, "reported", guard_calls=2),
    Scenario("full-warm", "json", SERIAL, FULL, "cache-warm", warm=True),
]


def write_config(directory: Path, guard_url: str, upstream_url: str) -> Path:
    routes = []
    for s in SCENARIOS:
        policy = {
            "name": f"bench-{s.name}",
            "description": f"moderation benchmark scenario {s.name}",
            "mode": "categories",
            "input": s.input if s.input is OFF else {"enabled": True, **s.input},
            "output": s.output,
            "on_guard_error": "closed",
        }
        path = directory / f"{s.name}.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        route = {"name": s.name, "path_prefix": f"/{s.name}", "upstream": "up"}
        routes.append({**route, "policy": str(path)})
    config = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "default_guard": "g",
        "guards": {"g": {"type": "sglang", "base_url": guard_url, "timeout_ms": 3000}},
        "upstreams": {"up": {"type": "openai", "base_url": f"{upstream_url}/v1"}},
        "routes": routes,
        "audit": {"enabled": False},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _body(prompt: str, stream: bool) -> bytes:
    messages = [
        {"role": "system", "content": "You are a helpful travel assistant."},
        {"role": "user", "content": prompt},
    ]
    return orjson.dumps({"model": "bench-model", "messages": messages, "stream": stream})


def _one(
    client: httpx.Client, url: str, s: Scenario, body: bytes, headers: dict[str, str]
) -> Sample:
    if s.stream:
        return chat_stream(client, url, body, headers, s.window)
    return chat(client, url, body, headers)


def _metric(sample: Sample, stream: bool) -> float:
    if not stream:
        return sample.total_ms
    assert sample.first_token_ms is not None
    return sample.first_token_ms


def run_scenario(
    s: Scenario,
    guard_ms: float,
    upstream: Child,
    gateway_proc: Child,
    requests: int,
    warmup: int,
    upstream_ms: float | None = None,
) -> Result:
    result = Result(s, guard_ms)
    run = uuid.uuid4().hex[:8]
    requests = max(1, round(requests * s.share))
    headers = {**SHAPES[s.shape], "content-type": "application/json"}
    if upstream_ms is not None:
        headers["x-double-delay-ms"] = f"{upstream_ms:g}"
    direct_chat = f"{upstream.url}/v1/chat/completions"
    gateway_chat = f"{gateway_proc.url}/{s.name}/v1/chat/completions"
    cpu_start = 0.0
    with httpx.Client(timeout=30) as direct, httpx.Client(timeout=30) as gw:
        for i in range(warmup + requests):
            if i == warmup:
                cpu_start = gateway_proc.cpu_s()
            prompt = PROMPT if s.warm else f"{PROMPT} (trip {run}-{i})"
            body = _body(prompt, s.stream)
            # Alternate who goes first, so neither side always follows the other's idle gap.
            if i % 2:
                g = _one(gw, gateway_chat, s, body, headers)
                d = _one(direct, direct_chat, s, body, headers)
            else:
                d = _one(direct, direct_chat, s, body, headers)
                g = _one(gw, gateway_chat, s, body, headers)
            if g.status != 200 or d.status != 200:
                raise RuntimeError(f"{s.name}: status direct {d.status}, gateway {g.status}")
            if i < warmup:
                continue
            dv, gv = _metric(d, s.stream), _metric(g, s.stream)
            result.direct.add(dv)
            result.gateway.add(gv)
            result.paired.add(gv - dv)
            if s.stream and s.output.get("enabled") and d.window_ms is not None:
                result.after_window.add(gv - d.window_ms)
            verdict = f"{g.headers.get('x-guardline-input')}/{g.headers.get('x-guardline-output')}"
            result.verdicts[verdict] += 1
            for name, dur in server_timing(g.headers.get("server-timing")).items():
                result.timing.setdefault(name, Series()).add(dur)
    result.gateway_cpu_ms = (gateway_proc.cpu_s() - cpu_start) * 1000 / max(1, requests)
    return result


def _f(value: float) -> str:
    return f"{value:.1f}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(results: list[Result], rtt: dict[float, Series]) -> str:
    head = (
        "| scenario | G ms | n | direct p50 | gateway p50 / p90 / p99 | added p50 / p90 / p99 "
        "| paired Δ p50 | residual p50 | guard-in / guard-out / overhead p50 "
        "| gateway CPU ms/req | target | met: G nominal / G = guard RTT p50 |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    )
    lines = [head]
    for r in results:
        s = r.scenario
        g = r.gateway
        timing = " / ".join(
            _f(r.timing[k].p50) if k in r.timing else "-"
            for k in ("guard-input", "guard-output", "overhead")
        )
        measured = rtt[r.guard_ms].p50
        met = "-" if s.met is None else f"{_yes(s.met(r, r.guard_ms))} / {_yes(s.met(r, measured))}"
        metric = "TTFT " if s.stream else ""
        # What is left of "added" once the guard round trips on the path are taken out.
        holdback = s.stream and bool(s.output.get("enabled"))
        base = r.after_window.p50 if s.shape == "paced" and holdback else r.added("p50")
        residual = base - s.guard_calls * rtt[r.guard_ms].p50
        lines.append(
            f"| {s.name} | {r.guard_ms:g} | {len(g.values)} | {metric}{_f(r.direct.p50)} "
            f"| {_f(g.p50)} / {_f(g.p90)} / {_f(g.p99)} "
            f"| {_f(r.added('p50'))} / {_f(r.added('p90'))} / {_f(r.added('p99'))} "
            f"| {_f(r.paired.p50)} | {_f(residual)} | {timing} | {r.gateway_cpu_ms:.2f} "
            f"| {s.target} | {met} |"
        )
        if r.after_window.values:
            w = r.after_window
            lines.append(
                f"| ↳ {s.name}: gateway TTFT - direct window | {r.guard_ms:g} | {len(w.values)} "
                f"| | | {_f(w.p50)} / {_f(w.p90)} / {_f(w.p99)} | | | | | | |"
            )
    return "\n".join(lines)


def rtt_table(rtt: dict[float, Series]) -> str:
    lines = [
        "| guard double G ms | n | bare round trip p50 / p90 / p99 ms |",
        "|---:|---:|---:|",
    ]
    for g, series in rtt.items():
        lines.append(
            f"| {g:g} | {len(series.values)} "
            f"| {_f(series.p50)} / {_f(series.p90)} / {_f(series.p99)} |"
        )
    return "\n".join(lines)


def verdict_notes(results: list[Result]) -> str:
    seen = sorted({f"{r.scenario.name}: {dict(r.verdicts)}" for r in results})
    return "x-guardline-input/output headers seen: " + "; ".join(seen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per row")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per row")
    parser.add_argument("--guard-ms", type=float, nargs="+", default=[15.0, 50.0])
    parser.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--note", default="", help="machine note for the docs (what else ran)")
    parser.add_argument("--rev", default="HEAD", help="commit whose gateway is measured")
    parser.add_argument(
        "--upstream-ms",
        type=float,
        default=None,
        help=f"upstream delay before answering (default {UPSTREAM_DELAY_MS})",
    )
    parser.add_argument(
        "--work-tree", action="store_true", help="run the work tree's code, not a snapshot"
    )
    args = parser.parse_args()
    # Cleanup (children stopped) on SIGTERM too, and on SIGINT even when started with `&`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: list[Result] = []
    rtt: dict[float, Series] = {}
    with upstream_double() as upstream, tempfile.TemporaryDirectory() as tmp:
        if args.work_tree:
            code, revision = ROOT, "the work tree as it was (uncommitted edits included)"
        else:
            code = Path(tmp) / "code"
            revision = f"commit {snapshot(code, args.rev)}"
        for guard_ms in args.guard_ms:
            directory = Path(tmp) / f"g{guard_ms:g}"
            directory.mkdir()
            # Not beside the policies: the policy watcher would see every log write.
            log_path = Path(tmp) / f"gateway-g{guard_ms:g}.log"
            with guard_double(guard_ms) as guard, log_path.open("wb") as log:
                config = write_config(directory, guard.url, upstream.url)
                rtt[guard_ms] = guard_round_trip(guard.url, PROMPT, args.requests, args.warmup)
                print(rtt_table({guard_ms: rtt[guard_ms]}).splitlines()[-1], flush=True)
                with gateway(config, log, root=code) as gw:
                    for s in scenarios:
                        r = run_scenario(
                            s, guard_ms, upstream, gw, args.requests, args.warmup, args.upstream_ms
                        )
                        results.append(r)
                        row = table([r], rtt).splitlines()[2]
                        print(row, flush=True)
    load_after = os.getloadavg()
    out = f"{rtt_table(rtt)}\n\n{table(results, rtt)}"
    argv = shlex.join(sys.argv[1:])
    command = f".venv/bin/python benchmarks/bench_moderation.py {argv}".strip()
    machine = (
        f"Measured {started} on {os.cpu_count()} cores; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; benchmark processes at nice "
        f"{os.nice(0)}. Gateway code: {revision}. {args.note}".strip()
    )
    block = f"Command: `{command}`\n\n{machine}\n\n{out}\n\n{verdict_notes(results)}"
    print()
    print(block)
    if args.write_docs:
        write_docs(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
