"""Per-request cost of tracing, metrics, audit and the request log line, against all off.

    .venv/bin/python benchmarks/bench_observability.py [--n 20000] [--otlp-endpoint URL]

One "request" is the observability work the gateway does around one moderated chat call with
an input and an output check: a SERVER span and three children (guard.input, upstream,
guard.output) with guardline.* and gen_ai.* attributes and traceparent injection; the
request, guard, verdict, cache and overhead metrics; two audit records (content hash included)
submitted to the real background writer on a real SQLite file; one JSON log line (to
/dev/null). The guard and upstream themselves are not simulated (zero-length work): what is
timed is only what observability adds. "off" keeps what the pipeline does anyway (the timing
ledger and its Server-Timing string).

Spans go through a BatchSpanProcessor to a discarding exporter by default (the request path
pays for span creation and queueing; export runs in the processor's thread), or to a real
OTLP/HTTP endpoint with --otlp-endpoint. The audit writer and span processor threads run
during the measurement and compete for the GIL, as they would in the server.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Tracer

from guard_engine.types import GuardRequest, Verdict
from proxy.audit.record import AuditRecord
from proxy.audit.store import AuditStore
from proxy.audit.writer import AuditWriter
from proxy.observability import tracing
from proxy.observability.logs import configure_logging, log_request, register_secrets
from proxy.observability.metrics import GatewayMetrics
from proxy.timing import RequestTiming

PROMPT = "How do I explain the causes of the First World War to a 10-year-old? " * 4
RESPONSE = "Great question! A long time ago, many countries in Europe had made promises... " * 6
HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class DiscardExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def verdict(stage: str) -> Verdict:
    return Verdict(
        stage=stage,  # type: ignore[arg-type]
        prompt_label="safe",
        response_label=None if stage == "input" else "safe",
        categories=(),
        score=0.02,
        think=None,
        raw="User Safety: safe",
        latency_ms=11.0,
        cache_hit=False,
        degraded=False,
        guard="nemotron",
        model="nvidia/Nemotron-3.5-Content-Safety",
        policy="kids-education@1a2b3c4d",
        mode="categories",
    )


@dataclass
class Parts:
    tracer: Tracer | None
    metrics: GatewayMetrics | None
    writer: AuditWriter | None
    logger: Any | None


V_IN, V_OUT = verdict("input"), verdict("output")
REQ_IN = GuardRequest(prompt=PROMPT)
REQ_OUT = GuardRequest(prompt=PROMPT, response=RESPONSE)


def one_request(p: Parts) -> None:
    timing = RequestTiming()
    span_cm = (
        p.tracer.start_as_current_span(
            "POST /v1/chat/completions",
            context=tracing.extract_context(HEADERS),
            kind=SpanKind.SERVER,
        )
        if p.tracer
        else None
    )
    root = span_cm.__enter__() if span_cm else None
    if root is not None:
        root.set_attributes(
            {
                tracing.ATTR_ROUTE: "kids",
                tracing.ATTR_TENANT: "acme",
                tracing.ATTR_POLICY: V_IN.policy,
                tracing.ATTR_POLICY_HASH: "1a2b3c4d",
            }
        )
    for stage, v, req in (
        ("input", V_IN, REQ_IN),
        ("upstream", None, None),
        ("output", V_OUT, REQ_OUT),
    ):
        kind = "upstream" if v is None else f"guard-{stage}"
        name = "upstream" if v is None else f"guard.{stage}"
        if p.tracer:
            with p.tracer.start_as_current_span(name) as span, timing.measure(kind):  # type: ignore[arg-type]
                tracing.inject()
                if v is None:
                    tracing.set_upstream_attributes(
                        span, provider="openai", request_model="gpt-4o-mini",
                        response_model="gpt-4o-mini-2024-07-18", input_tokens=60, output_tokens=90,
                    )  # fmt: skip
                else:
                    tracing.set_verdict_attributes(span, v)
        else:
            with timing.measure(kind):  # type: ignore[arg-type]
                pass
        if v is None or req is None:
            continue
        if p.metrics:
            p.metrics.observe_guard(v.guard, v.stage, v.latency_ms / 1000)
            p.metrics.observe_verdict("kids-education", v.stage, v.label, v.categories)
            p.metrics.observe_cache(v.guard, v.cache_hit)
        if p.writer:
            p.writer.submit(
                AuditRecord.from_verdict(v, req, request_id="req-1", route="kids", tenant="acme")
            )
    timing.finish()
    timing.server_timing()
    if p.metrics:
        p.metrics.observe_request("kids", 200, timing.total_seconds())
        p.metrics.observe_overhead(timing.overhead_seconds())
    if root is not None and span_cm is not None:
        root.set_attribute(tracing.ATTR_VERDICT, "safe")
        span_cm.__exit__(None, None, None)
    if p.logger is not None:
        log_request(
            p.logger, timing=timing, request_id="req-1", tenant="acme", route="kids",
            policy=V_IN.policy, status=200, input_verdict="safe", output_verdict="safe",
        )  # fmt: skip


def measure_interleaved(
    variants: dict[str, Callable[[], None]], n: int, block: int = 250
) -> dict[str, list[int]]:
    """n samples per variant, taken in alternating blocks so that every variant sees the same
    machine load (the development machine is shared and its load changes by the minute)."""
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up (label children, allocator, caches)
        for _ in range(min(n // 10, 1000)):
            fn()
    while any(len(s) < n for s in samples.values()):
        for name, fn in variants.items():
            out = samples[name]
            for _ in range(min(block, n - len(out))):
                t0 = time.perf_counter_ns()
                fn()
                out.append(time.perf_counter_ns() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--otlp-endpoint", default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="guardline-bench-"))
    # The SDK reads OTEL_* from the process environment.
    if args.otlp_endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.otlp_endpoint
        provider = tracing.setup_tracing()
        exporter = None
    else:
        exporter = DiscardExporter()
        provider = tracing.setup_tracing(span_processor=BatchSpanProcessor(exporter))
    tracer = tracing.tracer(provider)
    os.environ["OTEL_SDK_DISABLED"] = "true"
    disabled = tracing.setup_tracing()
    del os.environ["OTEL_SDK_DISABLED"]
    metrics = GatewayMetrics()
    store = AuditStore(workdir / "audit.sqlite3")
    writer = AuditWriter(store, queue_size=10000, metrics=metrics)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    configure_logging("info", stream=devnull)
    register_secrets(["sk-bench-0123456789abcdef", "tenant-key-acme-0123456789"])
    logger = structlog.get_logger("guardline.request")

    variants: dict[str, Parts] = {
        "all off": Parts(None, None, None, None),
        "tracing": Parts(tracer, None, None, None),
        "tracing, OTEL_SDK_DISABLED": Parts(tracing.tracer(disabled), None, None, None),
        "metrics": Parts(None, metrics, None, None),
        "audit": Parts(None, None, writer, None),
        "request log line": Parts(None, None, None, logger),
        "tracing + metrics + audit": Parts(tracer, metrics, writer, None),
        "all on (+ log line)": Parts(tracer, metrics, writer, logger),
    }
    gc.collect()
    calls: dict[str, Callable[[], None]] = {
        name: functools.partial(one_request, parts) for name, parts in variants.items()
    }
    samples = measure_interleaved(calls, args.n)
    results: dict[str, tuple[float, float, float]] = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=100)
        results[name] = (q[49] / 1000, q[89] / 1000, q[98] / 1000)
    writer.flush(60)
    provider.force_flush()

    base = results["all off"][0]
    print(f"{'variant':<28} {'p50 us':>9} {'p90 us':>9} {'p99 us':>9} {'p50 added us':>13}")
    for name, (p50, p90, p99) in results.items():
        print(f"{name:<28} {p50:>9.1f} {p90:>9.1f} {p99:>9.1f} {p50 - base:>13.1f}")
    writer.close(60)
    provider.shutdown()
    print(
        f"\naudit: {writer.written} written, {writer.dropped} dropped; "
        f"spans exported: {exporter.spans if exporter else 'to ' + args.otlp_endpoint}"
    )
    store.close()


if __name__ == "__main__":
    main()
