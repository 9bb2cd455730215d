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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.util.types import Attributes, AttributeValue

Annotate = Callable[[Span], None]


class ReservedIds(IdGenerator):
    """Random ids like the SDK's own generator, except that the next span id can be set: a
    span recorded late keeps the id its traceparent already announced. Used from the event
    loop's thread only (where spans are started)."""

    def __init__(self) -> None:
        self.next_span_id: int | None = None
        self.next_trace_id: int | None = None  # a root span recorded late keeps its trace id

    def generate_span_id(self) -> int:
        reserved, self.next_span_id = self.next_span_id, None
        if reserved is not None:
            return reserved
        return new_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # both ids are random, as with the SDK's RandomIdGenerator

    def generate_trace_id(self) -> int:
        reserved, self.next_trace_id = self.next_trace_id, None
        if reserved is not None:
            return reserved
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


class LateTracer(trace.Tracer):
    """A tracer whose spans take their ids and sampling decision when started and become SDK
    spans only when they end. Given to `ObservabilityMiddleware`, whose SERVER span ends after
    the response has been sent: the request path pays for ids and the sampler, not for the
    SDK span. Needs an SDK tracer from a provider built with `ReservedIds`."""

    def __init__(self, tracer: Tracer) -> None:
        ids = getattr(tracer, "id_generator", None)
        sampler = getattr(tracer, "sampler", None)
        if not isinstance(ids, ReservedIds) or sampler is None:
            raise ValueError("LateTracer needs an SDK tracer whose provider uses ReservedIds")
        self._tracer = tracer
        self._ids = ids
        self._sampler: Sampler = sampler

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = trace.get_current_span(context).get_span_context()
        root = not parent.is_valid
        trace_id = self._ids.generate_trace_id() if root else parent.trace_id
        sampled = self._sampler.should_sample(context, trace_id, name, kind, attributes, links)
        decision = sampled.decision
        flags = TraceFlags.SAMPLED if decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        if root or parent.trace_flags & _RANDOM_TRACE_ID:
            flags |= _RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            new_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampled.trace_state,
        )
        if decision is Decision.DROP:
            return NonRecordingSpan(span_context)
        return _PendingSpan(
            self._tracer,
            self._ids,
            name,
            context,
            kind,
            dict(attributes or {}),
            span_context,
            root,
            time.time_ns() if start_time is None else start_time,
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # (the API's decorator is private)
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


_RANDOM_TRACE_ID: Final = 0x02  # W3C trace-context level 2 "random trace id" flag


class _PendingSpan(Span):
    """A recording span kept as plain values until `end()`, which records the SDK span with the
    same ids and times."""

    def __init__(
        self,
        tracer: Tracer,
        ids: ReservedIds,
        name: str,
        parent: Context | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        span_context: SpanContext,
        root: bool,
        start_ns: int,
    ) -> None:
        self._tracer = tracer
        self._ids = ids
        self._name = name
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._context = span_context
        self._root = root
        self._start_ns = start_ns
        self._status: Status | None = None
        self._exceptions: list[tuple[BaseException, int]] = []
        self._events: list[tuple[str, Attributes, int]] = []
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if not self._ended:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if not self._ended:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        self._events.append((name, attributes, time.time_ns() if timestamp is None else timestamp))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        return  # not used by the gateway's SERVER span

    def update_name(self, name: str) -> None:
        self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._exceptions.append((exception, time.time_ns() if timestamp is None else timestamp))

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        ended = time.time_ns() if end_time is None else end_time
        self._ids.next_span_id = self._context.span_id
        self._ids.next_trace_id = self._context.trace_id if self._root else None
        try:
            span = self._tracer.start_span(
                self._name,
                context=self._parent,
                kind=self._kind,
                attributes=self._attributes,
                start_time=self._start_ns,
            )
        finally:
            self._ids.next_span_id = self._ids.next_trace_id = None
        for name, attributes, timestamp in self._events:
            span.add_event(name, attributes, timestamp)
        for exception, timestamp in self._exceptions:
            span.record_exception(exception, timestamp=timestamp)
        if self._status is not None:
            span.set_status(self._status)
        span.end(ended)
