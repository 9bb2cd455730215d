"""Two versions of the gateway side by side: what moderation costs in each, in one run.

bench_moderation.py measures one version; on a shared machine two runs minutes apart see
different loads, and the difference between versions drowns in it. This starts two gateways
(snapshots of `--before` and `--after`, each `guardline serve` with bench_moderation.py's
config) beside one SGLang guard double (`--guard-ms`) and one upstream double, and sends each
request of a scenario to the upstream directly, then to gateway A, then to gateway B (the
order of A and B alternating), so that machine noise hits both versions alike.

Per version and scenario: added latency p50 over the direct call, the residual (added p50
minus the bare guard round trip p50 times the guard calls on the path: guardline's own
latency net of guard time), the gateway's CPU per request (/proc), and the same net of the
`pass` scenario (what the moderation costs beyond the bare proxy hop). The guard double's
own CPU per request is reported too: it shares the machine's cores with the gateways.

    .venv/bin/python benchmarks/bench_moderation_ab.py --before f13789e --after HEAD \\
        [--requests 150] [--warmup 20] [--guard-ms 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_moderation import PROMPT, SCENARIOS, SHAPES, Scenario, _body, _metric, _one, write_config
from moderation_client import Series, guard_round_trip
from moderation_procs import Child, gateway, guard_double, snapshot, upstream_double

SCENARIO_NAMES = ("pass", "full", "stream-pass", "hb-both")


@dataclass
class Side:
    added: Series = field(default_factory=Series)
    cpu_s: float = 0.0


def run_scenario(
    s: Scenario,
    direct_url: str,
    gateways: dict[str, Child],
    guard: Child,
    requests: int,
    warmup: int,
) -> tuple[dict[str, Side], float]:
    """Per version: added latency and gateway CPU; and the guard double's CPU per request."""
    sides = {name: Side() for name in gateways}
    headers = {**SHAPES[s.shape], "content-type": "application/json"}
    run = uuid.uuid4().hex[:8]
    guard_cpu = 0.0
    names = list(gateways)
    with ExitStack() as stack:
        direct = stack.enter_context(httpx.Client(timeout=30))
        clients = {n: stack.enter_context(httpx.Client(timeout=30)) for n in names}
        for i in range(warmup + requests):
            body = _body(f"{PROMPT} (trip {run}-{i})", s.stream)
            d = _one(direct, f"{direct_url}/v1/chat/completions", s, body, headers)
            order = names if i % 2 else names[::-1]
            for name in order:
                gw = gateways[name]
                cpu0, guard0 = gw.cpu_s(), guard.cpu_s()
                g = _one(clients[name], f"{gw.url}/{s.name}/v1/chat/completions", s, body, headers)
                if g.status != 200 or d.status != 200:
                    raise RuntimeError(f"{s.name}: status direct {d.status}, {name} {g.status}")
                if i >= warmup:
                    sides[name].cpu_s += gw.cpu_s() - cpu0
                    sides[name].added.add(_metric(g, s.stream) - _metric(d, s.stream))
                    guard_cpu += guard.cpu_s() - guard0
    return sides, guard_cpu * 1000 / (requests * len(names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit of version A")
    parser.add_argument("--after", default="HEAD", help="commit of version B")
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--guard-ms", type=float, default=20.0)
    parser.add_argument("--only", nargs="*", default=list(SCENARIO_NAMES))
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if s.name in args.only]
    load_before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        upstream = stack.enter_context(upstream_double())
        guard = stack.enter_context(guard_double(args.guard_ms))
        (tmp / "policies").mkdir()
        config = write_config(tmp / "policies", guard.url, upstream.url)
        rtt = guard_round_trip(guard.url, PROMPT, args.requests, args.warmup)
        gateways: dict[str, Child] = {}
        for label, rev in (("A", args.before), ("B", args.after)):
            code = tmp / f"code-{label}"
            commit = snapshot(code, rev)
            log = stack.enter_context((tmp / f"gateway-{label}.log").open("wb"))
            gateways[f"{label} {commit}"] = stack.enter_context(gateway(config, log, root=code))
        print(f"guard double G={args.guard_ms:g} ms: bare round trip p50 {rtt.p50:.1f} ms")
        print(
            "| scenario | version | added p50 ms | residual p50 ms | gateway CPU ms/req "
            "| CPU net of pass ms/req | guard double CPU ms/req |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        pass_cpu: dict[str, float] = {}
        n = args.requests
        for s in scenarios:
            sides, guard_cpu = run_scenario(s, upstream.url, gateways, guard, n, args.warmup)
            for name, side in sides.items():
                cpu = side.cpu_s * 1000 / n
                if s.name in ("pass", "stream-pass"):
                    pass_cpu[f"{name} {s.stream}"] = cpu
                base = pass_cpu.get(f"{name} {s.stream}")
                net = f"{cpu - base:.2f}" if base is not None and s.guard_calls else "-"
                residual = side.added.p50 - s.guard_calls * rtt.p50
                print(
                    f"| {s.name} | {name} | {side.added.p50:.1f} | {residual:.1f} | {cpu:.2f} "
                    f"| {net} | {guard_cpu:.2f} |",
                    flush=True,
                )
    load_after = os.getloadavg()[0]
    print(
        f"\nMeasured {started} on {os.cpu_count()} cores; load average {load_before:.1f} before, "
        f"{load_after:.1f} after; {n} requests per scenario and version."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
