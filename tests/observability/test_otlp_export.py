"""OTLP over HTTP to a real receiver on 127.0.0.1: what a collector gets from guardline."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import SpanKind

from proxy.observability import tracing
from proxy.observability.tracing import setup_tracing
from tests.factories import OtelEnv


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver: decodes protobuf bodies of POST /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers_seen: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.received = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.paths.append(self.path)
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        self.server.requests.append(request)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        self.server.received.set()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _spans(receiver: Receiver) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for request in receiver.requests:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes: dict[str, object] = {"service.name": service}
                    for a in span.attributes:
                        value = a.value
                        kind = value.WhichOneof("value")
                        attributes[a.key] = (
                            [v.string_value for v in value.array_value.values]
                            if kind == "array_value"
                            else getattr(value, kind or "string_value")
                        )
                    attributes["_trace_id"] = span.trace_id.hex()
                    attributes["_parent"] = span.parent_span_id.hex()
                    attributes["_span_id"] = span.span_id.hex()
                    found[span.name] = attributes
    return found


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_spans_reach_a_real_otlp_http_receiver(
    receiver: Receiver, compression: str, otel_env: OtelEnv
) -> None:
    otel_env(
        {
            # No OTEL_TRACES_EXPORTER: an endpoint alone turns OTLP on.
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=abc%20123",
            "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
            "OTEL_SERVICE_NAME": "guardline-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
    )
    provider = setup_tracing()
    tracer = tracing.tracer(provider)
    parent = tracing.extract_context(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    with tracer.start_as_current_span(
        "POST /v1/chat/completions", context=parent, kind=SpanKind.SERVER
    ) as root:
        root.set_attribute(tracing.ATTR_POLICY, "default@0011aabb")
        with tracer.start_as_current_span(tracing.SPAN_GUARD_INPUT) as span:
            span.set_attributes(
                {tracing.ATTR_VERDICT: "unsafe", tracing.ATTR_CATEGORIES: ["Violence"]}
            )
        with tracer.start_as_current_span(tracing.SPAN_UPSTREAM, kind=SpanKind.CLIENT) as span:
            tracing.set_upstream_attributes(
                span, provider="openai", request_model="gpt-4o", input_tokens=5, output_tokens=7
            )
    assert provider.force_flush(10_000)
    provider.shutdown()

    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    assert receiver.headers_seen[0]["content-type"] == "application/x-protobuf"
    assert receiver.headers_seen[0]["x-collector-token"] == "abc 123"
    spans = _spans(receiver)
    assert set(spans) == {"POST /v1/chat/completions", "guard.input", "upstream"}
    root_span = spans["POST /v1/chat/completions"]
    assert root_span["service.name"] == "guardline-test"
    assert root_span["_trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert root_span["_parent"] == "b7ad6b7169203331"
    assert root_span[tracing.ATTR_POLICY] == "default@0011aabb"
    assert spans["guard.input"]["_parent"] == root_span["_span_id"]
    assert spans["guard.input"][tracing.ATTR_CATEGORIES] == ["Violence"]
    assert spans["upstream"]["gen_ai.usage.output_tokens"] == 7
    assert spans["upstream"]["gen_ai.request.model"] == "gpt-4o"


def test_a_dead_collector_never_blocks_or_fails_the_caller(otel_env: OtelEnv) -> None:
    # A port nothing listens on: the batch processor's export fails in its own thread.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    otel_env(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
        }
    )
    provider = setup_tracing()
    tracer = tracing.tracer(provider)
    failures: list[BaseException] = []

    def requests_then_shutdown() -> None:
        try:
            for _ in range(100):
                with tracer.start_as_current_span("r"):
                    pass
            provider.shutdown()
        except BaseException as exc:  # reported to the test thread below
            failures.append(exc)

    # A bound on hanging, not a latency assertion: the export timeout is 0.5 s, so a caller
    # (or shutdown) still blocked after 60 s means the dead collector blocks it.
    worker = threading.Thread(target=requests_then_shutdown, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "spans or shutdown blocked on a dead collector"
    assert failures == []  # nothing raised into the request path
