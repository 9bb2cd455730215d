"""Spans that cost the request path almost nothing: identity now, recording after the response.

A child span must have its id before the call it describes, because that id goes out in the
`traceparent` header (to the guard, to the upstream). Everything else (the SDK span object, its
attributes, its end) can wait until the response has been sent. On this gateway's machines the
OpenTelemetry SDK's `start_span` takes 50-100 µs per call once caches are cold (it is about 8 µs
in a tight loop), which made tracing the largest part of the gateway's own overhead.

`LateSpan.start(tracer, name, parent)` reserves a random span id (a few µs; `Parent.current()`
is looked up once per request), `carrier()` gives the trace headers,
`end()` notes the end time, and `record(annotate)` later creates the SDK span with exactly that
id (through `ReservedIds`, the provider's id generator), its real start and end times, and the
attributes `annotate` sets. The trace is the same as if the span had been made on the spot.

Without `ReservedIds` on the tracer (a provider built elsewhere), the span is started at once
and `record` only annotates and ends it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)

Annotate = Callable[[Span], None]


class ReservedIds(IdGenerator):
    """Random ids like the SDK's own generator, except that the next span id can be set: a
    span recorded late keeps the id its traceparent already announced. Used from the event
    loop's thread only (where spans are started)."""

    def __init__(self) -> None:
        self.next_span_id: int | None = None

    def generate_span_id(self) -> int:
        reserved, self.next_span_id = self.next_span_id, None
        if reserved is not None:
            return reserved
        return new_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # both ids are random, as with the SDK's RandomIdGenerator

    def generate_trace_id(self) -> int:
        trace_id = random.getrandbits(128)
        while trace_id == INVALID_TRACE_ID:
            trace_id = random.getrandbits(128)
        return trace_id


def new_span_id() -> int:
    span_id = random.getrandbits(64)
    while span_id == INVALID_SPAN_ID:
        span_id = random.getrandbits(64)
    return span_id


class Parent:
    """The span that late spans are children of (the request's current span), looked up once
    per request: on a cold cache every OpenTelemetry context call costs microseconds."""

    __slots__ = ("context", "prefix", "span_context", "suffix", "tracestate")

    def __init__(self, context: Context, span_context: SpanContext) -> None:
        self.context = context
        self.span_context = span_context
        state = span_context.trace_state
        self.tracestate = state.to_header() if state else None
        # traceparent = prefix + child span id + suffix (W3C trace context, version 00)
        self.prefix = f"00-{span_context.trace_id:032x}-"
        self.suffix = f"-{int(span_context.trace_flags):02x}"

    @classmethod
    def current(cls) -> Parent | None:
        """The current span as a parent; None when there is no trace (tracing off)."""
        context = otel_context.get_current()
        span_context = trace.get_current_span(context).get_span_context()
        return cls(context, span_context) if span_context.is_valid else None


class LateSpan:
    """One child of `parent`, recorded after the fact (see the module doc)."""

    __slots__ = (
        "_ended_ns",
        "_error",
        "_ids",
        "_kind",
        "_name",
        "_parent",
        "_recorded",
        "_span",
        "_start_ns",
        "_tracer",
        "span_id",
    )

    def __init__(
        self,
        tracer: Tracer,
        ids: ReservedIds | None,
        name: str,
        kind: SpanKind,
        parent: Parent,
        span_id: int,
        span: Span | None,
    ) -> None:
        self._tracer = tracer
        self._ids = ids
        self._name = name
        self._kind = kind
        self._parent = parent
        self.span_id = span_id
        self._span = span  # only without ReservedIds: the span started at once
        self._start_ns = time.time_ns()
        self._ended_ns: int | None = None
        self._error: BaseException | None = None
        self._recorded = False

    @classmethod
    def start(
        cls, tracer: Tracer, name: str, parent: Parent, kind: SpanKind = SpanKind.INTERNAL
    ) -> LateSpan:
        """A child of `parent` (from `Parent.current()`)."""
        ids = getattr(tracer, "id_generator", None)
        if not isinstance(ids, ReservedIds):
            span = tracer.start_span(name, context=parent.context, kind=kind)
            return cls(tracer, None, name, kind, parent, span.get_span_context().span_id, span)
        return cls(tracer, ids, name, kind, parent, new_span_id(), None)

    def carrier(self) -> dict[str, str]:
        """traceparent/tracestate naming this span as the parent of an outgoing call (W3C
        trace context, formatted here: the propagator's generic path costs more)."""
        parent = self._parent
        headers = {"traceparent": f"{parent.prefix}{self.span_id:016x}{parent.suffix}"}
        if parent.tracestate:
            headers["tracestate"] = parent.tracestate
        return headers

    def fail(self, exc: BaseException) -> None:
        self._error = exc

    def end(self, end_ns: int | None = None) -> None:
        """Note when the work ended (the first call counts)."""
        if self._ended_ns is None:
            self._ended_ns = time.time_ns() if end_ns is None else end_ns

    def record(self, annotate: Annotate | None = None) -> None:
        """Create (or finish) the SDK span: attributes from `annotate`, the noted times."""
        if self._recorded:
            return
        self._recorded = True
        span = self._span
        if span is None:
            if not self._parent.span_context.trace_flags.sampled or self._ids is None:
                return  # the trace is not sampled: nothing is recorded, as with the SDK
            self._ids.next_span_id = self.span_id
            try:
                span = self._tracer.start_span(
                    self._name,
                    context=self._parent.context,
                    kind=self._kind,
                    start_time=self._start_ns,
                )
            finally:
                self._ids.next_span_id = None
        if span.is_recording():
            if annotate is not None:
                annotate(span)
            if self._error is not None:
                span.record_exception(self._error)
                span.set_status(Status(StatusCode.ERROR, type(self._error).__name__))
        span.end(self._ended_ns)
