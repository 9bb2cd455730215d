"""OpenTelemetry tracing for the gateway: provider set-up from OTEL_* variables, W3C propagation,
and the attribute names every span uses.

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
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from guard_engine.types import Verdict
from proxy.observability import otlp

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
TracingConfigError = otlp.OtelConfigError


def setup_tracing(
    *,
    service_name: str = "guardline",
    env: Mapping[str, str] | None = None,
    span_processor: SpanProcessor | None = None,
    console_stream: IO[str] | None = None,
    id_generator: IdGenerator | None = None,
) -> TracerProvider:
    """Build a TracerProvider from the standard OTEL_* variables (`env`, default os.environ).

    `span_processor` is added beside the configured exporters (tests pass an in-memory one);
    `id_generator` replaces the SDK's random one (see proxy.observability.late_spans).
    Raises TracingConfigError at startup for an unknown exporter or an unsupported protocol.
    """
    if env is None:
        import os

        env = os.environ
    resource = otlp.resource(service_name, env)
    if otlp.sdk_disabled(env):
        # Spans become non-recording (cheap) but trace context still flows to the upstream.
        provider = TracerProvider(sampler=ALWAYS_OFF, resource=resource, id_generator=id_generator)
        if span_processor is not None:
            provider.add_span_processor(span_processor)
        return provider
    provider = TracerProvider(sampler=_sampler(env), resource=resource, id_generator=id_generator)
    for exporter in _exporters(env, console_stream):
        batch = _batch_settings(env)
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=batch.get("max_queue_size"),
                schedule_delay_millis=batch.get("schedule_delay_millis"),
                max_export_batch_size=batch.get("max_export_batch_size"),
                export_timeout_millis=batch.get("export_timeout_millis"),
            )
        )
    if span_processor is not None:
        provider.add_span_processor(span_processor)
    return provider


def exporter_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The OTLP header values (collector API keys), for `register_secrets` at startup."""
    if env is None:
        import os

        env = os.environ
    return otlp.header_values(env)


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


def _sampler(env: Mapping[str, str]) -> Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(arg) if arg else 1.0
    except ValueError as exc:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number") from exc
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={name!r} is not supported (one of {', '.join(samplers)})"
        )
    return samplers[name]


def _exporters(env: Mapping[str, str], console_stream: IO[str] | None) -> Iterable[SpanExporter]:
    for name in otlp.exporter_names(env, "traces"):
        if name == "otlp":
            yield _otlp_exporter(otlp.otlp_settings(env, "traces"))
        else:
            yield ConsoleSpanExporter(out=console_stream or sys.stdout)


def _otlp_exporter(settings: otlp.OtlpSettings) -> SpanExporter:
    if settings.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise otlp.grpc_missing(exc) from exc
        exporter: SpanExporter = GrpcExporter(
            endpoint=settings.endpoint, headers=settings.headers, timeout=settings.timeout_s
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=settings.headers,
        timeout=settings.timeout_s,
        compression=Compression(settings.compression),
    )


def _batch_settings(env: Mapping[str, str]) -> dict[str, int]:
    """OTEL_BSP_* read from `env` (the processor would otherwise read os.environ itself)."""
    names = {
        "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
        "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
        "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
    }
    settings: dict[str, int] = {}
    for variable, argument in names.items():
        raw = env.get(variable, "").strip()
        if raw:
            try:
                settings[argument] = int(raw)
            except ValueError as exc:
                raise TracingConfigError(f"{variable}={raw!r} is not an integer") from exc
    return settings
