"""OpenTelemetry tracing for the gateway: the SDK's provider (which configures itself from the
OTEL_* variables), W3C propagation, and the attribute names every span uses.

The provider is returned, never installed globally: the app owns it (lifespan) and passes the
tracer to whoever makes spans. Export always goes through a BatchSpanProcessor so that a slow or
dead collector costs a request nothing (spans queue, and are dropped when the queue is full).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import IO, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from guard_engine.types import Verdict
from proxy.observability import otel_env

__all__ = [
    "ATTR_CACHE_HIT",
    "ATTR_CATEGORIES",
    "ATTR_DEGRADED",
    "ATTR_GUARD",
    "ATTR_GUARD_MODEL",
    "ATTR_POLICY",
    "ATTR_POLICY_HASH",
    "ATTR_ROUTE",
    "ATTR_STAGE",
    "ATTR_TENANT",
    "ATTR_VERDICT",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_SYSTEM",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "SPAN_GUARD_HOLDBACK",
    "SPAN_GUARD_INPUT",
    "SPAN_GUARD_OUTPUT",
    "SPAN_UPSTREAM",
    "TRACE_HEADERS",
    "TracingConfigError",
    "exporter_secrets",
    "extract_context",
    "inject",
    "set_upstream_attributes",
    "set_verdict_attributes",
    "setup_tracing",
    "tracer",
]

INSTRUMENTATION_NAME: Final = "guardline"

# The W3C trace-context request headers (lower-case, as in ASGI scopes).
TRACE_HEADERS: Final = (b"traceparent", b"tracestate")

# Child span names (the SERVER span is named by the HTTP convention: "POST /v1/chat/completions").
SPAN_GUARD_INPUT: Final = "guard.input"
SPAN_UPSTREAM: Final = "upstream"
SPAN_GUARD_OUTPUT: Final = "guard.output"
SPAN_GUARD_HOLDBACK: Final = "guard.output.window"  # one per streaming hold-back check

# guardline's own attributes.
ATTR_POLICY: Final = "guardline.policy"  # name@hash8
ATTR_POLICY_HASH: Final = "guardline.policy_hash"  # hash8
ATTR_TENANT: Final = "guardline.tenant"
ATTR_REQUEST_ID: Final = "guardline.request_id"  # the x-guardline-request-id of the response
ATTR_ROUTE: Final = "guardline.route"
ATTR_STAGE: Final = "guardline.stage"  # input | output
ATTR_VERDICT: Final = "guardline.verdict"  # safe | unsafe | skipped | degraded
ATTR_CATEGORIES: Final = "guardline.categories"  # string array
ATTR_CACHE_HIT: Final = "guardline.cache_hit"
ATTR_DEGRADED: Final = "guardline.degraded"
ATTR_GUARD: Final = "guardline.guard"  # the configured guard's name
ATTR_GUARD_MODEL: Final = "guardline.guard.model"
ATTR_SCORE: Final = "guardline.score"
ATTR_HOLDBACK_INDEX: Final = "guardline.holdback.index"
# Text attributes: only set when tracing.record_content is on.
ATTR_CONTENT_PROMPT: Final = "guardline.content.prompt"
ATTR_CONTENT_RESPONSE: Final = "guardline.content.response"

# GenAI semantic conventions (development status; the current names as of semconv 1.37+:
# `gen_ai.provider.name` replaced `gen_ai.system`, which is kept here for older back-ends).
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM: Final = "gen_ai.system"  # deprecated alias of gen_ai.provider.name


# The OTEL_* configuration error (kept under this name for callers of setup_tracing).
TracingConfigError = otel_env.OtelConfigError


def setup_tracing(
    *,
    service_name: str = "guardline",
    span_processor: SpanProcessor | None = None,
    console_stream: IO[str] | None = None,
    id_generator: IdGenerator | None = None,
) -> TracerProvider:
    """The SDK's TracerProvider, configured by the SDK from the OTEL_* variables (sampler,
    resource, batch settings, OTLP endpoint and headers: see proxy.observability.otel_env).

    Each configured exporter gets a BatchSpanProcessor; `span_processor` is added beside them
    (tests pass an in-memory one); `id_generator` replaces the SDK's random one (only for
    `tracing.late_spans`: proxy.observability.late_spans). Raises TracingConfigError at
    startup for an unknown exporter or an unsupported protocol.
    """
    provider = TracerProvider(resource=otel_env.resource(service_name), id_generator=id_generator)
    if not otel_env.sdk_disabled():
        for exporter in _exporters(console_stream):
            provider.add_span_processor(BatchSpanProcessor(exporter))
    if span_processor is not None:
        provider.add_span_processor(span_processor)
    return provider


def exporter_secrets() -> list[str]:
    """The OTLP header values (collector API keys), for `register_secrets` at startup."""
    return otel_env.header_values()


def tracer(provider: trace.TracerProvider) -> Tracer:
    """guardline's tracer from `provider` (call once at startup, not per request)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        guardline_version: str | None = version("guardline")
    except PackageNotFoundError:
        guardline_version = None
    return provider.get_tracer(INSTRUMENTATION_NAME, guardline_version)


# --- W3C trace context ----------------------------------------------------------------------

_PROPAGATOR: Final = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Mapping[str, str]]):
    """Reads headers whatever their case (ASGI gives lower case, a plain dict may not)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            for name, candidate in carrier.items():
                if name.lower() == key:
                    value = candidate
                    break
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier.keys())


_GETTER: Final = _HeaderGetter()


def extract_context(headers: Mapping[str, str]) -> Context:
    """The client's trace context (traceparent/tracestate), or an empty context."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject(context: Context | None = None) -> dict[str, str]:
    """traceparent/tracestate headers for an outgoing call (upstream, guard).

    `context` defaults to the current one (the span active around the call).
    """
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


# --- attribute helpers ------------------------------------------------------------------------


def set_verdict_attributes(span: Span, verdict: Verdict) -> None:
    """The guardline.* attributes of one guard decision (no text)."""
    if not span.is_recording():
        return
    hash8 = verdict.policy.rpartition("@")[2]
    span.set_attributes(
        {
            ATTR_POLICY: verdict.policy,
            ATTR_POLICY_HASH: hash8,
            ATTR_STAGE: verdict.stage,
            ATTR_VERDICT: "degraded" if verdict.degraded else verdict.label,
            ATTR_CATEGORIES: list(verdict.categories),
            ATTR_CACHE_HIT: verdict.cache_hit,
            ATTR_DEGRADED: verdict.degraded,
            ATTR_GUARD: verdict.guard,
            ATTR_GUARD_MODEL: verdict.model,
        }
    )
    if verdict.score is not None:
        span.set_attribute(ATTR_SCORE, verdict.score)


def set_upstream_attributes(
    span: Span,
    *,
    provider: str,
    request_model: str | None,
    response_model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    operation: str = "chat",
) -> None:
    """GenAI semantic-convention attributes of the upstream call; None values are left out."""
    if not span.is_recording():
        return
    attributes: dict[str, str | int] = {
        GEN_AI_OPERATION_NAME: operation,
        GEN_AI_PROVIDER_NAME: provider,
        GEN_AI_SYSTEM: provider,
    }
    if request_model is not None:
        attributes[GEN_AI_REQUEST_MODEL] = request_model
    if response_model is not None:
        attributes[GEN_AI_RESPONSE_MODEL] = response_model
    if input_tokens is not None:
        attributes[GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
    if output_tokens is not None:
        attributes[GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens
    span.set_attributes(attributes)


# --- OTEL_* -> exporters ----------------------------------------------------------------------


def _exporters(console_stream: IO[str] | None) -> Iterable[SpanExporter]:
    for name in otel_env.exporter_names("traces"):
        if name == "otlp":
            yield _otlp_exporter()
        else:
            yield ConsoleSpanExporter(out=console_stream or sys.stdout)


def _otlp_exporter() -> SpanExporter:
    """The OTLP exporter of the configured protocol; it reads its endpoint, headers, timeout
    and compression from the OTEL_EXPORTER_OTLP_* variables itself."""
    if otel_env.otlp_protocol("traces") == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise otel_env.grpc_missing(exc) from exc
        exporter: SpanExporter = GrpcExporter()
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
