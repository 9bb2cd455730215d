"""Benchmark: the latency a cascade guard adds when its head answers locally, against a check
the model guard answers (issue 13, "added latency of a locally answered check vs a model-guard
check").

Processes as in bench_moderation.py: the SGLang guard double at a fixed latency (default
20 ms), the OpenAI upstream double (answering at once, so the guard's share stands out) and the
gateway (`guardline serve`) with one route per scenario; every route checks the input only
(serial), output off. Requests are sequential (concurrency 1) on keep-alive connections, one
round of all scenarios after another in rotating order, so shared-machine noise hits every
row alike. Prompts are unique per request: neither the verdict cache nor the embedding cache
answers.

  pass         no check: the gateway and upstream floor                      baseline
  local        cascade whose head (the shipped heads, thresholds 0.5 / 0.99) answers the
               benign prompt locally: x-guardline-guard input:local/local
  fallthrough  cascade whose thresholds (0 / 1) send every check on to the model guard:
               local scoring first, then the model guard (input:fallthrough/g)
  model        the model guard alone (input:g)
  embedded     the plain embedded guard (input:emb): what the local scoring itself costs

"added" = the scenario's percentile minus pass's; "paired" = per-round difference to pass.
Every response's x-guardline-guard is checked: a row whose checks were not answered where the
scenario says is reported as a failure, not measured.

Run: .venv/bin/python benchmarks/bench_cascade.py [--requests 200] [--write-docs] (--help)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docs_block import replace_block
from moderation_client import Series, chat, guard_round_trip, server_timing
from moderation_procs import ROOT, gateway, guard_double, snapshot, upstream_double

from guard_engine.backends.distilled_head import DistillMeta, Thresholds, save_distilled
from guard_engine.backends.embedded_head import DEFAULT_WEIGHTS, load_heads

PROMPT = (
    "I'm planning a week-long hiking trip in the Alps in late September with two friends. "
    "What gear should we bring and how should we plan daily distances?"
)
BEGIN, END = "<!-- bench_cascade:begin -->", "<!-- bench_cascade:end -->"
SECTION = "## Cascade guard: local answers vs the model guard (issue 13)"


@dataclass(frozen=True)
class Scenario:
    name: str
    guard: str | None  # the policy's guard; None: input check off
    expect: str | None  # x-guardline-guard every response must carry


SCENARIOS = [
    Scenario("pass", None, None),
    Scenario("local", "local", "input:local/local"),
    Scenario("fallthrough", "fallthrough", "input:fallthrough/g"),
    Scenario("model", "g", "input:g"),
    Scenario("embedded", "emb", "input:emb"),
]


@dataclass
class Row:
    scenario: Scenario
    latency: Series = field(default_factory=Series)
    paired: Series = field(default_factory=Series)  # this request - the round's pass request
    guard_input: Series = field(default_factory=Series)  # Server-Timing guard-input
    unexpected: int = 0  # responses answered by another guard than the scenario's


def head(directory: Path, name: str, low: float, high: float) -> Path:
    """A head file with the shipped heads' weights and the given thresholds for both stages."""
    thresholds = Thresholds(low, high)
    meta = DistillMeta(
        policy="bench@00000000",
        tenant=None,
        window=("2026-11-01T00:00:00.000Z", "2026-11-30T00:00:00.000Z"),
        counts={},
        agreement={},
        prompt_thresholds=thresholds,
        response_thresholds=thresholds,
        target_agreement=0.99,
        local_share={},
        created=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
    )
    path = directory / f"{name}.npz"
    save_distilled(load_heads(DEFAULT_WEIGHTS), meta, path)
    return path


def write_config(directory: Path, guard_url: str, upstream_url: str) -> Path:
    cascade: dict[str, Any] = {"type": "cascade", "guard": "g", "recheck_sample": 0.0}
    guards = {
        "g": {"type": "sglang", "base_url": guard_url, "timeout_ms": 3000},
        "emb": {"type": "embedded"},
        "local": {**cascade, "head": str(head(directory, "local", 0.5, 0.99))},
        "fallthrough": {**cascade, "head": str(head(directory, "fallthrough", 0.0, 1.0))},
    }
    routes = []
    for s in SCENARIOS:
        policy: dict[str, Any] = {
            "name": f"bench-{s.name}",
            "description": f"cascade benchmark scenario {s.name}",
            "mode": "categories",
            "input": {"enabled": s.guard is not None},
            "output": {"enabled": False},
            "on_guard_error": "closed",
        }
        if s.guard is not None:
            policy["guard"] = s.guard
        path = directory / f"{s.name}.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        routes.append(
            {"name": s.name, "path_prefix": f"/{s.name}", "upstream": "up", "policy": str(path)}
        )
    config = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "default_guard": "g",
        "guards": guards,
        "upstreams": {"up": {"type": "openai", "base_url": f"{upstream_url}/v1"}},
        "routes": routes,
        "audit": {"enabled": False},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measure(url: str, requests: int, warmup: int) -> list[Row]:
    rows = [Row(s) for s in SCENARIOS]
    run = uuid.uuid4().hex[:8]
    headers = {"content-type": "application/json", "x-double-delay-ms": "0"}
    with httpx.Client(timeout=30) as client:
        for i in range(warmup + requests):
            shift = i % len(rows)  # rotate who goes first in the round
            order = rows[shift:] + rows[:shift]
            totals: dict[str, float] = {}
            for row in order:
                prompt = f"{PROMPT} (trip {run}-{row.scenario.name}-{i})"
                body = orjson.dumps(
                    {"model": "bench-model", "messages": [{"role": "user", "content": prompt}]}
                )
                sample = chat(
                    client, f"{url}/{row.scenario.name}/v1/chat/completions", body, headers
                )
                if sample.status != 200:
                    raise RuntimeError(f"{row.scenario.name}: status {sample.status}")
                totals[row.scenario.name] = sample.total_ms
                if i < warmup:
                    continue
                if sample.headers.get("x-guardline-guard") != row.scenario.expect:
                    row.unexpected += 1
                row.latency.add(sample.total_ms)
                timing = server_timing(sample.headers.get("server-timing"))
                if "guard-input" in timing:
                    row.guard_input.add(timing["guard-input"])
            if i >= warmup:
                for row in rows:
                    row.paired.add(totals[row.scenario.name] - totals["pass"])
    return rows


def _f(value: float) -> str:
    return f"{value:.1f}"


def table(rows: list[Row], guard_ms: float) -> str:
    base = rows[0].latency
    lines = [
        "| scenario | G ms | n | answered by | gateway p50 / p90 / p99 ms "
        "| added p50 / p99 ms | paired Δ p50 ms | guard-input p50 / p99 ms | unexpected |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s, lat = row.scenario, row.latency
        timing = row.guard_input
        guard_timing = f"{_f(timing.p50)} / {_f(timing.p99)}" if timing.values else "-"
        lines.append(
            f"| {s.name} | {guard_ms:g} | {len(lat.values)} | {s.expect or '-'} "
            f"| {_f(lat.p50)} / {_f(lat.p90)} / {_f(lat.p99)} "
            f"| {_f(lat.p50 - base.p50)} / {_f(lat.p99 - base.p99)} | {_f(row.paired.p50)} "
            f"| {guard_timing} | {row.unexpected} |"
        )
    return "\n".join(lines)


def write_docs(block: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace this benchmark's generated block (the prose around it stays)."""
    replace_block(path, begin=BEGIN, end=END, section=SECTION, block=block)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured rounds")
    parser.add_argument("--guard-ms", type=float, default=20.0, help="the guard double's delay")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--note", default="", help="machine note for the docs (what else ran)")
    parser.add_argument("--rev", default="HEAD", help="commit whose gateway is measured")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with upstream_double() as upstream, tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code"
        revision = f"commit {snapshot(code, args.rev)}"
        directory = Path(tmp) / "config"
        directory.mkdir()
        log_path = Path(tmp) / "gateway.log"
        with guard_double(args.guard_ms) as guard, log_path.open("wb") as log:
            config = write_config(directory, guard.url, upstream.url)
            rtt = guard_round_trip(guard.url, PROMPT, min(args.requests, 100), 10)
            with gateway(config, log, root=code) as gw:
                rows = measure(gw.url, args.requests, args.warmup)
    load_after = os.getloadavg()
    failed = [r.scenario.name for r in rows if r.unexpected]
    argv = shlex.join(sys.argv[1:])
    command = f".venv/bin/python benchmarks/bench_cascade.py {argv}".strip()
    machine = (
        f"Measured {started} on {os.cpu_count()} cores; load average {load_before[0]:.1f} "
        f"before, {load_after[0]:.1f} after. Gateway code: {revision}. Bare guard double "
        f"round trip p50 / p99: {_f(rtt.p50)} / {_f(rtt.p99)} ms. {args.note}"
    ).strip()
    block = f"Command: `{command}`\n\n{machine}\n\n{table(rows, args.guard_ms)}"
    print(block)
    if failed:
        print(f"\nanswered by another guard than expected: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.write_docs:
        write_docs(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
