"""The moderation pipeline's child spans and the trace context it sends out.

    guard.input / guard.output / guard.output.window   INTERNAL, one per guard check, with the
                                                       decision's guardline.* attributes; the
                                                       guard receives this span's traceparent
    upstream                                           CLIENT, the upstream call, with GenAI
                                                       attributes; the upstream receives this
                                                       span's traceparent (never the client's)

The same calls feed the request's `RequestTiming`. For a stream the upstream span and the
`upstream` timing cover the whole body, not just the response head: each wait for the next
upstream chunk is upstream time, so what remains as overhead is the gateway's own work.

Spans are the SDK's own: started when the call starts (the traceparent names them), annotated
and ended when it ends. `tracing.late_spans: true` (opt-in) records them after the response
instead (`proxy.observability.late_spans`: cheaper on the request path, relies on SDK
internals; measured in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from opentelemetry.trace import (
    NoOpTracer,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)

from guard_engine.engine import GuardEngine
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.chat_call import ChatCall
from proxy.config_schema import LiteLLMUpstreamConfig
from proxy.context import RequestContext
from proxy.moderation.decide import StageResult, judge
from proxy.moderation.observer import Check
from proxy.observability import tracing
from proxy.observability.late_spans import LateSpan, Parent, ReservedIds
from proxy.timing import Kind, RequestTiming
from proxy.upstreams.reply import RawHeaders, UpstreamReply

if TYPE_CHECKING:
    from proxy.state import ChatService, GatewayState
    from proxy.streaming.outcome import StreamOutcome


def with_trace_headers(headers: RawHeaders, carrier: dict[str, str]) -> RawHeaders:
    """`headers` with the client's trace headers replaced by `carrier` (the gateway's span)."""
    out = [(k, v) for k, v in headers if k not in tracing.TRACE_HEADERS]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items())
    return out


def _usage(body: bytes) -> tuple[str | None, int | None, int | None]:
    """(response model, input tokens, output tokens) of a complete answer body (chat or
    Responses API)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    return (_str(data.get("model")), *_tokens(data.get("usage")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tokens(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if prompt is None and completion is None:  # the Responses API's names
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


Annotate = Callable[[Span], None]


def start_child(tracer: Tracer, name: str, kind: SpanKind = SpanKind.INTERNAL) -> Span | None:
    """A child of the current span (the request's SERVER span), or None without a trace
    (tracing off: the client's trace headers then go out as they came)."""
    span = tracer.start_span(name, kind=kind)
    return span if span.get_span_context().is_valid else None


def carrier(span: Span) -> dict[str, str]:
    """traceparent/tracestate naming `span` as the parent of an outgoing call."""
    return tracing.inject(set_span_in_context(span))


def end_span(
    span: Span,
    annotate: Annotate | None,
    error: BaseException | None = None,
    end_ns: int | None = None,
) -> None:
    """Annotate (when recording) and end `span` (at `end_ns`, default now); `error` marks it
    failed."""
    if span.is_recording():
        if annotate is not None:
            annotate(span)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end(end_ns)


class ChildSpan(Protocol):
    """One child span of the request, as the observer uses it."""

    def headers(self) -> dict[str, str]:
        """traceparent/tracestate naming this span as the parent of the outgoing call."""
        ...

    def finish(
        self,
        annotate: Annotate | None,
        error: BaseException | None = None,
        end_ns: int | None = None,
    ) -> None:
        """The work ended (at `end_ns`, default now): attributes from `annotate`."""
        ...


class _SdkChild:
    """The default: an SDK span, started when the work starts, ended when it ends."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def headers(self) -> dict[str, str]:
        return carrier(self.span)

    def finish(
        self,
        annotate: Annotate | None,
        error: BaseException | None = None,
        end_ns: int | None = None,
    ) -> None:
        end_span(self.span, annotate, error, end_ns)


class _LateChild:
    """`tracing.late_spans: true`: ids now, the SDK span recorded once the response is out
    (proxy.observability.late_spans; relies on SDK internals, hence opt-in)."""

    __slots__ = ("context", "late")

    def __init__(self, late: LateSpan, context: RequestContext | None) -> None:
        self.late = late
        self.context = context

    def headers(self) -> dict[str, str]:
        return self.late.carrier()

    def finish(
        self,
        annotate: Annotate | None,
        error: BaseException | None = None,
        end_ns: int | None = None,
    ) -> None:
        late = self.late
        if error is not None:
            late.fail(error)
        late.end(end_ns)
        if self.context is None:
            late.record(annotate)
        else:
            self.context.after_response(lambda: late.record(annotate))


class ObservedTiming(RequestTiming):
    """A request's timing ledger that also knows the request's context and, for late spans,
    its SERVER span as their parent (looked up once per request)."""

    __slots__ = ("context", "parent")

    def __init__(self, context: RequestContext | None) -> None:
        super().__init__(context.start if context is not None else None)
        self.context = context
        self.parent: Parent | bool | None = False  # False: not looked up yet


class UpstreamStream:
    """An upstream SSE body whose chunk waits are timed as `upstream` and whose end ends the
    upstream span. After `defer()` the span is recorded by `finish()` instead, which adds the
    usage the moderated stream collected."""

    __slots__ = ("_annotate", "_deferred", "_ended_ns", "_error", "_inner", "_span", "_timing")

    def __init__(
        self,
        inner: AsyncIterator[bytes],
        span: ChildSpan | None,
        timing: RequestTiming,
        annotate: Annotate,
    ) -> None:
        self._inner = inner
        self._span = span
        self._timing = timing
        self._annotate = annotate
        self._deferred = False
        self._ended_ns: int | None = None  # when the body ended (the span's end)
        self._error: BaseException | None = None

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        started = time.perf_counter()
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._ended()
            raise
        except BaseException as exc:
            self._error = exc
            self._ended()
            raise
        finally:
            self._timing.add("upstream", started, time.perf_counter())

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        try:
            if close is not None:
                await close()
        finally:
            self._ended()

    def defer(self) -> None:
        self._deferred = True

    def _ended(self) -> None:
        span = self._span
        if span is None or self._ended_ns is not None:
            return
        self._ended_ns = time.time_ns()
        if not self._deferred:
            self._end(self._annotate)

    def _end(self, annotate: Annotate) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.finish(annotate, self._error, self._ended_ns)

    def finish(self, model: str | None, usage: dict[str, Any] | None) -> None:
        """End a deferred span with what the moderated stream learned (model, usage)."""
        if self._span is None or not self._deferred:
            return
        if self._ended_ns is None:  # the client left before the body ended
            self._ended_ns = time.time_ns()
        annotate = self._annotate

        def with_usage(otel_span: Span) -> None:
            annotate(otel_span)
            input_tokens, output_tokens = _tokens(usage)
            for key, value in (
                (tracing.GEN_AI_RESPONSE_MODEL, model),
                (tracing.GEN_AI_USAGE_INPUT_TOKENS, input_tokens),
                (tracing.GEN_AI_USAGE_OUTPUT_TOKENS, output_tokens),
            ):
                if value is not None:
                    otel_span.set_attribute(key, value)

        self._end(with_usage)


# The span of each guard check.
_SPAN_NAMES: Final[dict[Check, str]] = {
    "input": tracing.SPAN_GUARD_INPUT,
    "output": tracing.SPAN_GUARD_OUTPUT,
    "output.window": tracing.SPAN_GUARD_HOLDBACK,
}


class ModerationSpans:
    """Spans + timing around the pipeline's guard checks and upstream call: the pipeline's
    `ModerationObserver` (proxy.moderation.observer)."""

    def __init__(
        self,
        tracer: Tracer | None = None,
        *,
        record_content: bool = False,
        late_spans: bool = False,
    ) -> None:
        self.tracer: Tracer = tracer if tracer is not None else NoOpTracer()
        self.record_content = record_content
        # tracing.late_spans: children recorded after the response (proxy.observability.
        # late_spans); needs the provider's ReservedIds, else they are plain SDK spans.
        self._late = late_spans and isinstance(
            getattr(self.tracer, "id_generator", None), ReservedIds
        )
        self._providers: dict[str, str] = {}

    @staticmethod
    def timing(call: ChatCall) -> RequestTiming:
        """The request's ledger, started when the request's first byte arrived."""
        return ObservedTiming(call.context)

    def _start(
        self, name: str, timing: RequestTiming, kind: SpanKind = SpanKind.INTERNAL
    ) -> ChildSpan | None:
        """A child of the request's span, or None without a trace (tracing off: the client's
        trace headers then go out as they came)."""
        if not self._late:
            span = start_child(self.tracer, name, kind)
            return _SdkChild(span) if span is not None else None
        observed = timing if isinstance(timing, ObservedTiming) else ObservedTiming(None)
        if observed.parent is False:
            observed.parent = Parent.current()
        parent = observed.parent
        if not isinstance(parent, Parent):
            return None
        return _LateChild(LateSpan.start(self.tracer, name, parent, kind), observed.context)

    # --- guard checks -------------------------------------------------------------------------

    async def check(
        self,
        check: Check,
        engine: GuardEngine,
        request: GuardRequest,
        policy: CompiledPolicy,
        timing: RequestTiming,
        kind: Kind,
        *,
        index: int | None = None,
        upstream_started: bool = False,
    ) -> StageResult:
        """One guard decision in its own span; the guard gets this span's traceparent."""
        span = self._start(_SPAN_NAMES[check], timing)
        try:
            with timing.measure(kind):
                result = await judge(
                    engine,
                    request,
                    policy,
                    headers=span.headers() if span is not None else None,
                    upstream_started=upstream_started,
                )
        except BaseException as exc:
            if span is not None:
                span.finish(None, exc)
            raise
        if span is not None:

            def annotate(otel_span: Span) -> None:
                self._annotate(otel_span, result, policy, request, index)

            span.finish(annotate)
        return result

    def _annotate(
        self,
        span: Span,
        result: StageResult,
        policy: CompiledPolicy,
        request: GuardRequest,
        index: int | None,
    ) -> None:
        if result.verdict is not None:
            tracing.set_verdict_attributes(span, result.verdict)
            if result.status == "degraded":
                span.set_attribute(tracing.ATTR_VERDICT, "degraded")
        else:  # not checked (on_guard_error: open)
            span.set_attributes(
                {
                    tracing.ATTR_POLICY: policy.ref,
                    tracing.ATTR_POLICY_HASH: policy.ref.rpartition("@")[2],
                    tracing.ATTR_STAGE: result.stage,
                    tracing.ATTR_VERDICT: result.status,
                    tracing.ATTR_DEGRADED: True,
                    tracing.ATTR_CATEGORIES: [],
                }
            )
        if result.degraded_reason:
            span.set_attribute("guardline.degraded_reason", result.degraded_reason)
        if index is not None:
            span.set_attribute(tracing.ATTR_HOLDBACK_INDEX, index)
        if self.record_content:
            if request.response is None:
                span.set_attribute(tracing.ATTR_CONTENT_PROMPT, request.prompt)
            else:
                span.set_attribute(tracing.ATTR_CONTENT_RESPONSE, request.response)

    # --- upstream -----------------------------------------------------------------------------

    async def upstream(
        self,
        forward: ChatService,
        state: GatewayState,
        call: ChatCall,
        timing: RequestTiming,
    ) -> UpstreamReply:
        """Call the upstream in a CLIENT span that its traceparent names as the parent."""
        span = self._start(tracing.SPAN_UPSTREAM, timing, SpanKind.CLIENT)
        if span is not None:
            call = replace(call, headers=with_trace_headers(call.headers, span.headers()))
        started = time.perf_counter()
        try:
            reply = await forward(state, call)
        except BaseException as exc:
            timing.add("upstream", started, time.perf_counter())
            if span is not None:
                if isinstance(exc, asyncio.CancelledError):
                    # Parallel input check blocked: cancelled on purpose, not an error.
                    span.finish(_cancelled)
                else:
                    span.finish(None, exc)
            raise
        timing.add("upstream", started, time.perf_counter())
        provider = self._provider(state, call.route.upstream)
        status, body, model = reply.status, reply.body, call.body.model or None
        streamed = reply.stream is not None

        def annotate(otel_span: Span) -> None:
            response_model: str | None = None
            input_tokens: int | None = None
            output_tokens: int | None = None
            if not streamed and status < 400:
                response_model, input_tokens, output_tokens = _usage(body)
            tracing.set_upstream_attributes(
                otel_span,
                provider=provider,
                request_model=model,
                response_model=response_model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
            otel_span.set_attribute("http.response.status_code", status)
            if status >= 400:
                otel_span.set_status(Status(StatusCode.ERROR))

        if reply.stream is not None:
            # The span lasts as long as the body: UpstreamStream records it at its end.
            reply.stream = UpstreamStream(reply.stream, span, timing, annotate)
        elif span is not None:
            span.finish(annotate)
        return reply

    @staticmethod
    def defer_stream_end(stream: AsyncIterator[bytes] | None) -> None:
        """The pipeline moderates this stream: its span waits for `stream_done`."""
        if isinstance(stream, UpstreamStream):
            stream.defer()

    @staticmethod
    def stream_done(stream: AsyncIterator[bytes] | None, outcome: StreamOutcome) -> None:
        """The moderated stream ended: the upstream span gets the usage and is recorded."""
        if isinstance(stream, UpstreamStream):
            stream.finish(outcome.model, outcome.usage)

    def _provider(self, state: GatewayState, upstream: str) -> str:
        provider = self._providers.get(upstream)
        if provider is None:
            cfg = state.config.upstreams.get(upstream)
            provider = "openai"
            if isinstance(cfg, LiteLLMUpstreamConfig) and "/" in cfg.model:
                provider = cfg.model.split("/", 1)[0]
            self._providers[upstream] = provider
        return provider


def _cancelled(span: Span) -> None:
    span.set_attribute("guardline.cancelled", True)
