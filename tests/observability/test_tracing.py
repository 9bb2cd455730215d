"""Tracing set-up and span shape, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guard_engine.types import Verdict
from proxy.observability import tracing
from proxy.observability.tracing import TracingConfigError, setup_tracing
from tests.factories import OtelEnv

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01"


def _verdict(**overrides: object) -> Verdict:
    fields: dict[str, object] = {
        "stage": "input",
        "prompt_label": "unsafe",
        "response_label": None,
        "categories": ("Violence", "Threat"),
        "score": 0.93,
        "think": None,
        "raw": "User Safety: unsafe",
        "latency_ms": 12.5,
        "cache_hit": False,
        "degraded": False,
        "guard": "nemotron",
        "model": "nvidia/Nemotron-3.5-Content-Safety",
        "policy": "kids-education@1a2b3c4d",
        "mode": "categories",
    }
    fields.update(overrides)
    return Verdict(**fields)  # type: ignore[arg-type]


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = setup_tracing(span_processor=SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_request_span_tree_continues_the_client_trace(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = tracing.tracer(provider)
    parent = tracing.extract_context({"Traceparent": CLIENT_PARENT, "tracestate": "vendor=x"})
    with tracer.start_as_current_span(
        "POST /v1/chat/completions", context=parent, kind=SpanKind.SERVER
    ) as root:
        root.set_attributes({tracing.ATTR_ROUTE: "kids", tracing.ATTR_TENANT: "acme"})
        with tracer.start_as_current_span(tracing.SPAN_GUARD_INPUT) as span:
            guard_headers = tracing.inject()
            tracing.set_verdict_attributes(span, _verdict())
        with tracer.start_as_current_span(tracing.SPAN_UPSTREAM, kind=SpanKind.CLIENT) as span:
            upstream_headers = tracing.inject()
            tracing.set_upstream_attributes(
                span,
                provider="openai",
                request_model="gpt-4o-mini",
                response_model="gpt-4o-mini-2024-07-18",
                input_tokens=12,
                output_tokens=34,
            )
        with tracer.start_as_current_span(tracing.SPAN_GUARD_OUTPUT) as span:
            tracing.set_verdict_attributes(
                span,
                _verdict(stage="output", response_label="safe", categories=(), cache_hit=True),
            )

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/chat/completions", "guard.input", "upstream", "guard.output"}
    root_span = spans["POST /v1/chat/completions"]
    assert root_span.kind is SpanKind.SERVER
    assert format(root_span.context.trace_id, "032x") == CLIENT_TRACE_ID
    assert root_span.parent is not None and root_span.parent.span_id == 0x00F067AA0BA902B7
    for name in ("guard.input", "upstream", "guard.output"):
        child_parent = spans[name].parent
        assert child_parent is not None
        assert child_parent.span_id == root_span.context.span_id

    # Propagation: the upstream and the guard see the same trace, with their span as parent.
    for headers, name in ((upstream_headers, "upstream"), (guard_headers, "guard.input")):
        _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
        assert trace_id == CLIENT_TRACE_ID
        assert span_id == format(spans[name].context.span_id, "016x")
        assert headers["tracestate"] == "vendor=x"

    guard_in = spans["guard.input"].attributes or {}
    assert guard_in[tracing.ATTR_POLICY] == "kids-education@1a2b3c4d"
    assert guard_in[tracing.ATTR_POLICY_HASH] == "1a2b3c4d"
    assert guard_in[tracing.ATTR_VERDICT] == "unsafe"
    assert tuple(guard_in[tracing.ATTR_CATEGORIES]) == ("Violence", "Threat")  # type: ignore[arg-type]
    assert guard_in[tracing.ATTR_CACHE_HIT] is False
    assert guard_in[tracing.ATTR_DEGRADED] is False
    assert guard_in[tracing.ATTR_GUARD] == "nemotron"
    assert guard_in[tracing.ATTR_GUARD_MODEL] == "nvidia/Nemotron-3.5-Content-Safety"
    assert (spans["guard.output"].attributes or {})[tracing.ATTR_CACHE_HIT] is True
    assert (spans["guard.output"].attributes or {})[tracing.ATTR_VERDICT] == "safe"

    upstream = spans["upstream"].attributes or {}
    assert upstream["gen_ai.operation.name"] == "chat"
    assert upstream["gen_ai.provider.name"] == "openai"
    assert upstream["gen_ai.request.model"] == "gpt-4o-mini"
    assert upstream["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert upstream["gen_ai.usage.input_tokens"] == 12
    assert upstream["gen_ai.usage.output_tokens"] == 34
    # No text of the guard's answer or the request in any span.
    for finished in spans.values():
        assert "User Safety" not in json.dumps(dict(finished.attributes or {}))


def test_no_client_traceparent_starts_a_new_trace(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    with tracing.tracer(provider).start_as_current_span(
        "r", context=tracing.extract_context({}), kind=SpanKind.SERVER
    ):
        headers = tracing.inject()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert headers["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")


def test_malformed_traceparent_is_ignored(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    context = tracing.extract_context({"traceparent": "00-zzzz-not-a-trace"})
    with tracing.tracer(provider).start_as_current_span("r", context=context):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None


def test_resource_from_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    default = setup_tracing()
    assert default.resource.attributes["service.name"] == "guardline"
    default.shutdown()
    exporter = InMemorySpanExporter()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-prod")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=safety%20ops")
    provider = setup_tracing(span_processor=SimpleSpanProcessor(exporter))
    with tracing.tracer(provider).start_as_current_span("x"):
        pass
    provider.shutdown()
    resource = exporter.get_finished_spans()[0].resource.attributes
    assert resource["service.name"] == "gw-prod"
    assert resource["deployment.environment"] == "prod"
    assert resource["team"] == "safety ops"


def test_console_exporter_writes_json_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = setup_tracing(console_stream=out)
    with tracing.tracer(provider).start_as_current_span("guard.input"):
        pass
    provider.force_flush()
    provider.shutdown()
    assert json.loads(out.getvalue())["name"] == "guard.input"


def test_sdk_disabled_records_nothing_but_still_propagates(otel_env: OtelEnv) -> None:
    exporter = InMemorySpanExporter()
    otel_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    provider = setup_tracing(span_processor=SimpleSpanProcessor(exporter))
    parent = tracing.extract_context({"traceparent": CLIENT_PARENT})
    with tracing.tracer(provider).start_as_current_span("r", context=parent) as span:
        assert not span.is_recording()
        headers = tracing.inject()
    provider.shutdown()
    assert exporter.get_finished_spans() == ()
    assert headers["traceparent"].split("-")[1] == CLIENT_TRACE_ID


def test_sampler_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = setup_tracing(span_processor=SimpleSpanProcessor(exporter))
    with tracing.tracer(provider).start_as_current_span("r"):
        pass
    provider.shutdown()
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'",
        ),
    ],
)
def test_unsupported_settings_fail_at_startup(
    env: dict[str, str], message: str, otel_env: OtelEnv
) -> None:
    otel_env(env)
    with pytest.raises(TracingConfigError, match=message.replace("/", ".")):
        setup_tracing()


def test_grpc_without_its_package_is_a_clear_startup_error(otel_env: OtelEnv) -> None:
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the gRPC exporter is installed here")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    otel_env(env)
    with pytest.raises(TracingConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
        setup_tracing()


def test_no_endpoint_means_no_exporter() -> None:
    provider = setup_tracing()
    # Only the SDK's own multi-processor, with nothing in it.
    assert provider._active_span_processor._span_processors == ()
    provider.shutdown()


def test_library_does_not_install_a_global_provider() -> None:
    before = trace.get_tracer_provider()
    provider = setup_tracing()
    assert trace.get_tracer_provider() is before
    provider.shutdown()


def test_exporter_secrets_lists_otlp_header_values(otel_env: OtelEnv) -> None:
    assert tracing.exporter_secrets() == []
    otel_env(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%3D%3D,x-team=safety",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20t0ken",
        }
    )
    assert tracing.exporter_secrets() == ["abc==", "safety", "Bearer t0ken"]
