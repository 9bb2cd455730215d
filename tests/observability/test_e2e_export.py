"""End to end through a real server: the official openai client calls a uvicorn app built from
the observability blocks (middleware, spans, timing, metrics, audit, logs), traces go over
OTLP/HTTP to a real receiver, /metrics is scraped, and the captured logs hold no secret.

The handler stands in for the moderation pipeline (which the app wires separately): it makes
the same calls, in the same places, that the pipeline does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guard_engine.types import GuardRequest
from proxy.audit.record import AuditRecord
from proxy.audit.store import AuditStore
from proxy.audit.writer import AuditWriter
from proxy.context import request_context
from proxy.observability import tracing
from proxy.observability.asgi import ObservabilityMiddleware
from proxy.observability.logs import configure_logging, log_request, register_secrets
from proxy.observability.metrics import GatewayMetrics
from proxy.timing import RequestTiming
from tests.conftest_servers import run_server
from tests.factories import OtelEnv, make_verdict
from tests.observability.test_otlp_export import Receiver, _spans

TENANT_KEY = "gl-acme-e2e-key-5d1c9a0b7e"
CLIENT_TRACE = "5e0f0c1e2d3c4b5a69788796a5b4c3d2"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", stream=out)
    register_secrets([TENANT_KEY])
    yield out
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "guardline-json"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    structlog.reset_defaults()


def build_app(
    receiver_url: str, audit_path: Path, otel_env: OtelEnv
) -> tuple[Starlette, AuditWriter]:
    otel_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver_url, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    provider = tracing.setup_tracing()
    tracer = tracing.tracer(provider)
    metrics = GatewayMetrics()
    writer = AuditWriter(AuditStore(audit_path), 100, metrics)
    log = structlog.get_logger("guardline.request")

    async def chat(request: Request) -> Response:
        context = request_context(request.scope)
        context.route, context.tenant = "default", "acme"
        body = await request.json()
        # A careless debug line: the redactor must still keep the key out of the log.
        log.info("debug headers", headers=dict(request.headers))
        timing = RequestTiming(start=context.start)
        guard_request = GuardRequest(prompt=body["messages"][-1]["content"])
        with tracer.start_as_current_span(tracing.SPAN_GUARD_INPUT) as span:
            started = time.perf_counter()
            verdict = make_verdict(policy="default@00aa11bb", guard="nemotron", latency_ms=2.0)
            timing.add("guard-input", started, time.perf_counter())
            tracing.set_verdict_attributes(span, verdict)
            record = AuditRecord.from_verdict(
                verdict, guard_request, request_id="req-e2e", route="default", tenant="acme"
            )
        writer.submit(record)
        metrics.observe_verdict("default", "input", verdict.label, verdict.categories)
        with (
            tracer.start_as_current_span(tracing.SPAN_UPSTREAM) as span,
            timing.measure("upstream"),
        ):
            upstream_headers = tracing.inject()
            tracing.set_upstream_attributes(
                span, provider="openai", request_model=body["model"], response_model="m-1",
                input_tokens=3, output_tokens=2,
            )  # fmt: skip
        timing.finish()
        metrics.observe_overhead(timing.overhead_seconds())
        log_request(log, timing=timing, request_id="req-e2e", route="default", status=200)
        completion = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m-1",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }  # fmt: skip
        return JSONResponse(
            completion,
            headers={
                "server-timing": timing.server_timing(),
                "x-upstream-traceparent": upstream_headers["traceparent"],
                "x-audit-id": record.id,
            },
        )

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"content-type": content_type})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(writer.close, 10)
        await asyncio.to_thread(provider.shutdown)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/metrics", metrics_endpoint),
        ],
        middleware=[Middleware(ObservabilityMiddleware, tracer=tracer, metrics=metrics)],
        lifespan=lifespan,
    )
    return app, writer


def test_openai_client_through_a_real_server(
    receiver: Receiver,
    logs: io.StringIO,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    otel_env: OtelEnv,
) -> None:
    app, writer = build_app(receiver.url, tmp_path / "audit.sqlite3", otel_env)
    with run_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TENANT_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"traceparent": f"00-{CLIENT_TRACE}-1111111111111111-01"},
        )
        assert raw.parse().choices[0].message.content == "hi"
        scraped = httpx.get(f"{url}/metrics").text
    # Server stopped: its shutdown hook flushed the span processor and the audit writer.

    server_timing = dict(part.split(";dur=") for part in raw.headers["server-timing"].split(", "))
    assert set(server_timing) == {"guard-input", "upstream", "overhead"}
    assert float(server_timing["overhead"]) >= 0

    spans = _spans(receiver)
    assert {"POST /v1/chat/completions", "guard.input", "upstream"} <= set(spans)
    server = spans["POST /v1/chat/completions"]
    assert server["_trace_id"] == CLIENT_TRACE and server["_parent"] == "1111111111111111"
    assert server[tracing.ATTR_ROUTE] == "default" and server[tracing.ATTR_TENANT] == "acme"
    assert spans["upstream"]["_parent"] == server["_span_id"]
    assert spans["upstream"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert spans["guard.input"][tracing.ATTR_POLICY] == "default@00aa11bb"
    upstream_parent = raw.headers["x-upstream-traceparent"].split("-")
    assert (
        upstream_parent[1] == CLIENT_TRACE and upstream_parent[2] == spans["upstream"]["_span_id"]
    )

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
    }
    assert samples[("guardline_verdicts_total", (("category", "none"), ("policy", "default"),
                    ("stage", "input"), ("verdict", "safe")))] == 1  # fmt: skip
    assert samples[("guardline_overhead_seconds_count", ())] == 1

    with AuditStore(tmp_path / "audit.sqlite3", readonly=True) as store:
        (record,) = store.query()
    assert record.id == raw.headers["x-audit-id"] and record.trace_id == CLIENT_TRACE
    assert writer.written == 1

    captured = capfd.readouterr()
    everything = logs.getvalue() + captured.out + captured.err
    assert TENANT_KEY not in everything
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    request_line = next(line for line in lines if line["event"] == "request")
    assert request_line["trace_id"] == CLIENT_TRACE
    assert request_line["timings_ms"]["overhead"] == pytest.approx(
        float(server_timing["overhead"]), abs=0.01
    )
    debug = next(line for line in lines if line["event"] == "debug headers")
    assert debug["headers"]["authorization"] == "[REDACTED]"
