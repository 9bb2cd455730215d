"""ObservabilityMiddleware: the SERVER span, its children, request metrics, the start time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.context import request_context
from proxy.observability import tracing
from proxy.observability.asgi import ObservabilityMiddleware
from proxy.observability.metrics import GatewayMetrics

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing(span_processor=SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def make_app(tracer: Tracer | None, metrics: GatewayMetrics | None) -> Starlette:
    async def chat(request: Request) -> Response:
        context = request_context(request.scope)
        context.route, context.tenant = "kids", "acme"
        context.request_id = "0123456789abcdef"
        assert tracer is not None
        with tracer.start_as_current_span(tracing.SPAN_UPSTREAM):
            headers = tracing.inject()
        return JSONResponse({"start": request_context(request.scope).start, "sent": headers})

    async def stream(request: Request) -> Response:
        request_context(request.scope).route = "kids"

        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    async def boom(request: Request) -> Response:
        raise RuntimeError("kaput")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/stream", stream),
            Route("/boom", boom),
        ],
        middleware=[Middleware(ObservabilityMiddleware, tracer=tracer, metrics=metrics)],
    )


def client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


async def test_server_span_parents_the_handler_spans_and_continues_the_client_trace(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    metrics = GatewayMetrics()
    app = make_app(tracing.tracer(provider), metrics)
    async with client(app) as c:
        reply = await c.post(
            "/v1/chat/completions",
            json={},
            headers={"traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"},
        )
    assert reply.status_code == 200
    assert isinstance(reply.json()["start"], float)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /v1/chat/completions"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert attributes[tracing.ATTR_ROUTE] == "kids"
    assert attributes[tracing.ATTR_TENANT] == "acme"
    assert attributes[tracing.ATTR_REQUEST_ID] == "0123456789abcdef"
    upstream = spans["upstream"]
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    assert reply.json()["sent"]["traceparent"].split("-")[1] == CLIENT_TRACE
    sample = metrics.registry.get_sample_value
    assert sample("guardline_requests_total", {"route": "kids", "status": "200"}) == 1


async def test_streams_errors_and_unknown_paths(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    metrics = GatewayMetrics()
    app = make_app(tracing.tracer(provider), metrics)
    async with client(app) as c:
        assert (await c.get("/stream")).text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert (await c.get("/boom")).status_code == 500
        assert (await c.get("/no/such/path")).status_code == 404
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["GET /stream", "GET /boom", "GET"]
    boom = exporter.get_finished_spans()[1]
    assert boom.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in boom.events)
    sample = metrics.registry.get_sample_value
    assert sample("guardline_requests_total", {"route": "kids", "status": "200"}) == 1
    assert sample("guardline_requests_total", {"route": "unmatched", "status": "500"}) == 1
    assert sample("guardline_requests_total", {"route": "unmatched", "status": "404"}) == 1


async def test_metrics_only_and_all_off() -> None:
    metrics = GatewayMetrics()

    async def ok(request: Request) -> Response:
        return JSONResponse({"start": request_context(request.scope).start})

    for tracer, m in ((None, metrics), (None, None)):
        app = Starlette(
            routes=[Route("/", ok)],
            middleware=[Middleware(ObservabilityMiddleware, tracer=tracer, metrics=m)],
        )
        async with client(app) as c:
            assert isinstance((await c.get("/")).json()["start"], float)
    labels = {"route": "unmatched", "status": "200"}
    assert metrics.registry.get_sample_value("guardline_requests_total", labels) == 1
