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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import orjson
from opentelemetry.trace import (
    NoOpTracer,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
    use_span,
)

from guard_engine.engine import GuardEngine
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.config_schema import LiteLLMUpstreamConfig
from proxy.forward import ChatCall, ChatService
from proxy.moderation.decide import StageResult, judge
from proxy.observability import tracing
from proxy.observability.timing import Kind, RequestTiming
from proxy.upstreams.reply import RawHeaders, UpstreamReply

if TYPE_CHECKING:
    from proxy.state import GatewayState
    from proxy.streaming.outcome import StreamOutcome

TRACE_HEADERS: Final = (b"traceparent", b"tracestate")


def with_trace_headers(headers: RawHeaders, carrier: dict[str, str]) -> RawHeaders:
    """`headers` with the client's trace headers replaced by `carrier` (the gateway's span)."""
    out = [(k, v) for k, v in headers if k not in TRACE_HEADERS]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items())
    return out


def _usage(body: bytes) -> tuple[str | None, int | None, int | None]:
    """(response model, input tokens, output tokens) of a complete chat completion body."""
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
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


class UpstreamStream:
    """An upstream SSE body whose chunk waits are timed as `upstream` and whose end ends the
    upstream span. After `defer()` the span is left open at the end (its end time noted) for
    `ModerationSpans.stream_done`, which adds the usage the moderated stream collected."""

    __slots__ = ("_closed", "_deferred", "_ended_ns", "_inner", "_span", "_timing")

    def __init__(self, inner: AsyncIterator[bytes], span: Span, timing: RequestTiming) -> None:
        self._inner = inner
        self._span = span
        self._timing = timing
        self._deferred = False
        self._ended_ns: int | None = None
        self._closed = False

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
            if self._span.is_recording():
                self._span.record_exception(exc)
                self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
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
        if self._ended_ns is None:
            self._ended_ns = time.time_ns()
            if not self._deferred:
                self._span.end(self._ended_ns)

    def finish(self, model: str | None, usage: dict[str, Any] | None) -> None:
        """End a deferred span with what the moderated stream learned (model, usage)."""
        if self._closed or not self._deferred:
            return
        self._closed = True
        if self._span.is_recording():
            input_tokens, output_tokens = _tokens(usage)
            for key, value in (
                (tracing.GEN_AI_RESPONSE_MODEL, model),
                (tracing.GEN_AI_USAGE_INPUT_TOKENS, input_tokens),
                (tracing.GEN_AI_USAGE_OUTPUT_TOKENS, output_tokens),
            ):
                if value is not None:
                    self._span.set_attribute(key, value)
        self._span.end(self._ended_ns)  # None (still open, e.g. client gone): now


class ModerationSpans:
    """Spans + timing around the pipeline's guard checks and upstream call."""

    def __init__(self, tracer: Tracer | None = None, *, record_content: bool = False) -> None:
        self.tracer: Tracer = tracer if tracer is not None else NoOpTracer()
        self.record_content = record_content
        self._providers: dict[str, str] = {}

    # --- guard checks -------------------------------------------------------------------------

    async def judge(
        self,
        name: str,
        engine: GuardEngine,
        request: GuardRequest,
        policy: CompiledPolicy,
        timing: RequestTiming,
        kind: Kind,
        *,
        index: int | None = None,
    ) -> StageResult:
        """One guard decision in its own span; the guard gets this span's traceparent."""
        with self.tracer.start_as_current_span(name) as span:
            with timing.measure(kind):
                headers = tracing.inject()
                result = await judge(engine, request, policy, headers=headers or None)
            if span.is_recording():
                self._annotate(span, result, policy, request, index)
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
        span = self.tracer.start_span(tracing.SPAN_UPSTREAM, kind=SpanKind.CLIENT)
        carrier = tracing.inject(set_span_in_context(span))
        if carrier:
            call = replace(call, headers=with_trace_headers(call.headers, carrier))
        started = time.perf_counter()
        try:
            with use_span(span, record_exception=False, set_status_on_exception=False):
                reply = await forward(state, call)
        except BaseException as exc:
            timing.add("upstream", started, time.perf_counter())
            self._failed(span, exc)
            span.end()
            raise
        timing.add("upstream", started, time.perf_counter())
        if span.is_recording():
            model: str | None = None
            input_tokens: int | None = None
            output_tokens: int | None = None
            if reply.stream is None and reply.status < 400:
                model, input_tokens, output_tokens = _usage(reply.body)
            tracing.set_upstream_attributes(
                span,
                provider=self._provider(state, call.route.upstream),
                request_model=call.body.model or None,
                response_model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
            span.set_attribute("http.response.status_code", reply.status)
            if reply.status >= 400:
                span.set_status(Status(StatusCode.ERROR))
        if reply.stream is None:
            span.end()
            return reply
        reply.stream = UpstreamStream(reply.stream, span, timing)
        return reply

    @staticmethod
    def defer_stream_end(stream: AsyncIterator[bytes] | None) -> None:
        """The pipeline moderates this stream: its span waits for `stream_done`."""
        if isinstance(stream, UpstreamStream):
            stream.defer()

    @staticmethod
    def stream_done(stream: AsyncIterator[bytes] | None, outcome: StreamOutcome) -> None:
        """The moderated stream ended: the upstream span gets the usage and ends."""
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

    @staticmethod
    def _failed(span: Span, exc: BaseException) -> None:
        if not span.is_recording():
            return
        if isinstance(exc, asyncio.CancelledError):
            # Parallel input check blocked: the call was cancelled on purpose, not an error.
            span.set_attribute("guardline.cancelled", True)
            return
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
