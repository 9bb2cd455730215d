"""Late spans: the traceparent sent out names the span that is recorded after the response, with
its real times; unsampled traces record nothing; without ReservedIds the span starts at once.

`tracing.late_spans` (opt-in) relies on OpenTelemetry SDK internals: a provider's
`id_generator` asked for exactly one span id per `start_span` (ReservedIds), the SDK tracer's
`id_generator` and `sampler` attributes (LateTracer). These tests pin that behaviour: an SDK
upgrade that changes it fails here."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from proxy.observability import tracing
from proxy.observability.late_spans import LateSpan, LateTracer, Parent, ReservedIds

TRACESTATE = "vendor=abc"


def _tracer(
    *, reserved: bool = True, sampled: bool = True
) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=ParentBased(ALWAYS_ON) if sampled else ALWAYS_OFF,
        id_generator=ReservedIds() if reserved else None,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracing.tracer(provider), exporter


def test_reserved_ids_hand_out_the_reserved_span_id_once() -> None:
    ids = ReservedIds()
    ids.next_span_id = 0x1234
    assert ids.generate_span_id() == 0x1234
    assert ids.generate_span_id() not in (0, 0x1234)
    assert ids.generate_trace_id() != 0 and ids.is_trace_id_random()


def test_late_span_is_recorded_with_the_announced_id_and_real_times() -> None:
    tracer, exporter = _tracer()
    client = tracing.extract_context(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         "tracestate": TRACESTATE}
    )  # fmt: skip
    with tracer.start_as_current_span("server", context=client) as server:
        parent = Parent.current()
        assert parent is not None
        late = LateSpan.start(tracer, "upstream", parent, SpanKind.CLIENT)
        carrier = late.carrier()
        started = time.time_ns()
        late.end()
    # The outgoing headers parse back to this trace and the reserved span id.
    sent = trace.get_current_span(tracing.extract_context(carrier)).get_span_context()
    assert sent.trace_id == server.get_span_context().trace_id
    assert sent.span_id == late.span_id
    assert carrier["tracestate"] == TRACESTATE
    assert carrier == tracing.inject(trace.set_span_in_context(trace.NonRecordingSpan(sent)))

    late.record(lambda span: span.set_attribute("k", "v"))
    late.record()  # once only
    recorded = [s for s in exporter.get_finished_spans() if s.name == "upstream"]
    assert len(recorded) == 1
    span = recorded[0]
    assert span.context.span_id == late.span_id and span.kind == SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == server.get_span_context().span_id
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= started <= span.end_time
    assert dict(span.attributes or {}) == {"k": "v"}


def test_a_failure_is_recorded_on_the_span() -> None:
    tracer, exporter = _tracer()
    with tracer.start_as_current_span("server"):
        parent = Parent.current()
    assert parent is not None
    late = LateSpan.start(tracer, "guard.input", parent)
    late.fail(TimeoutError("guard timed out"))
    late.end()
    late.record()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "guard.input"]
    assert span.status.status_code == StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_unsampled_trace_propagates_but_records_nothing() -> None:
    tracer, exporter = _tracer(sampled=False)
    with tracer.start_as_current_span("server"):
        parent = Parent.current()
    assert parent is not None
    late = LateSpan.start(tracer, "guard.input", parent)
    flags = int(late.carrier()["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 0x01 == 0  # not sampled, as the parent
    late.end()
    late.record()
    assert exporter.get_finished_spans() == ()


def test_no_current_span_means_no_parent() -> None:
    assert Parent.current() is None


def test_without_reserved_ids_the_span_starts_at_once() -> None:
    tracer, exporter = _tracer(reserved=False)
    with tracer.start_as_current_span("server"):
        parent = Parent.current()
    assert parent is not None
    late = LateSpan.start(tracer, "guard.input", parent)
    late.end()
    late.record(lambda span: span.set_attribute("k", 1))
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "guard.input"]
    assert span.context.span_id == late.span_id
    assert dict(span.attributes or {}) == {"k": 1}


def test_late_tracer_root_span_keeps_its_ids_times_and_attributes() -> None:
    sdk_tracer, exporter = _tracer()
    tracer = LateTracer(sdk_tracer)
    span = tracer.start_span("GET", kind=SpanKind.SERVER, attributes={"a": 1})
    ids = span.get_span_context()
    assert ids.is_valid and ids.trace_flags.sampled and span.is_recording()
    with trace.use_span(span, end_on_exit=False):
        parent = Parent.current()
        assert parent is not None and parent.span_context == ids
    span.update_name("GET /x")
    span.set_attribute("b", "two")
    span.record_exception(ValueError("bad"))
    span.set_status(StatusCode.ERROR)
    assert exporter.get_finished_spans() == ()  # nothing recorded before the end
    span.end()
    span.end()
    (recorded,) = exporter.get_finished_spans()
    assert recorded.name == "GET /x" and recorded.kind == SpanKind.SERVER
    assert recorded.context.trace_id == ids.trace_id and recorded.context.span_id == ids.span_id
    assert recorded.parent is None
    assert dict(recorded.attributes or {}) == {"a": 1, "b": "two"}
    assert recorded.status.status_code == StatusCode.ERROR
    assert recorded.events[0].name == "exception"


def test_late_tracer_continues_a_remote_parent_and_drops_unsampled() -> None:
    sdk_tracer, exporter = _tracer()
    tracer = LateTracer(sdk_tracer)
    remote = tracing.extract_context(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    )
    span = tracer.start_span("POST", context=remote, kind=SpanKind.SERVER)
    # parentbased_always_on follows the client's "not sampled".
    assert not span.is_recording() and not span.get_span_context().trace_flags.sampled
    span.end()
    assert exporter.get_finished_spans() == ()
    with tracer.start_as_current_span("op") as current:
        assert trace.get_current_span() is current
    (recorded,) = exporter.get_finished_spans()
    assert recorded.name == "op"


def test_late_tracer_needs_reserved_ids() -> None:
    sdk_tracer, _ = _tracer(reserved=False)
    with pytest.raises(ValueError):
        LateTracer(sdk_tracer)
