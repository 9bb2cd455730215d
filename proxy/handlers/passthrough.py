"""`{prefix}/v1/{path}`, any method: the rest of the OpenAI API, relayed by the route's rule.

The catch-all after the explicit routes (chat completions, models, moderations). Per request:
authenticate, route (on prefix and tenant; on the body's `model` too where the gateway reads
the body), then the route's rule for the path (`proxy.endpoints`):

    deny   403 `endpoint_not_allowed` (permission_error), nothing is sent upstream
    pass   the request streams to the upstream as it arrives and the answer streams back
           (multipart uploads, downloads, SSE: never buffered whole), marked
           `x-guardline-input: unchecked`
    check  the JSON body (bounded by server.max_body_bytes) is read, its text input judged
           with the route policy's input check like a chat prompt (on_guard_error,
           on_uncheckable, guard spans, Server-Timing); unsafe is a 400
           content_policy_violation, otherwise the same bytes are relayed

Answers of these endpoints are never moderated: `x-guardline-output: unchecked`.
A path that an explicit route serves with another method is a 405, as before; so is HEAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import Span, SpanKind, Tracer
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.chat_call import ChatCall
from proxy.config_schema import OpenAIUpstreamConfig
from proxy.context import ModerationSummary, request_context
from proxy.disconnect import CancelOnDisconnect, ClientDisconnected, until_disconnect
from proxy.endpoints import CHECKABLE, rule_for
from proxy.errors import (
    ContentPolicyViolation,
    GatewayError,
    GuardUnavailableError,
    InvalidField,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from proxy.moderation.blocks import input_violation
from proxy.moderation.decide import StageResult, skipped
from proxy.moderation.headers import Decisions
from proxy.observability import tracing
from proxy.observability.moderation_spans import (
    ModerationSpans,
    carrier,
    end_span,
    start_child,
    with_trace_headers,
)
from proxy.request_body import ChatBody
from proxy.state import get_state
from proxy.timing import RequestTiming
from proxy.upstreams.openai_upstream import OpenAIUpstream
from proxy.upstreams.passthrough import RelayedResponse, relay, request_headers, upstream_url
from proxy.upstreams.reply import RawHeaders

if TYPE_CHECKING:
    from proxy.moderation.pipeline import ModerationPipeline

ROUTE_HEADER = b"x-guardline-route"
UNCHECKED = "unchecked"


class EndpointNotAllowed(GatewayError):
    """The route's rule (or the safe default) refuses this endpoint."""

    status = 403
    type = "permission_error"
    code = "endpoint_not_allowed"


async def passthrough(request: Request) -> Response:
    scope = request.scope
    method: str = scope["method"]
    _explicit_route_method(request)
    if method == "HEAD":  # no OpenAI endpoint answers HEAD, and its answer has no body to relay
        raise MethodNotAllowed(f"Method HEAD is not allowed for {scope['path']}.")
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    context = request_context(scope)
    context.tenant = tenant
    prefix, path = state.router.split_path(scope["path"])

    field = CHECKABLE.get(path) if method == "POST" else None
    raw: bytes | None = None
    data: dict[str, Any] | None = None
    model: str | None = None
    if field is not None:  # a JSON body the gateway may read: it also names the model
        raw = await request.body()
        data = _json_object(raw)
        candidate = data.get("model") if data is not None else None
        model = candidate if isinstance(candidate, str) else None
    route = state.router.match(prefix, tenant, model)
    context.route = route.name
    route_header = {ROUTE_HEADER.decode(): route.name}
    rule = rule_for(route.endpoints, path)
    if rule == "deny":
        raise EndpointNotAllowed(
            f"{method} {path} is not allowed on this gateway (route '{route.name}').",
            headers=route_header,
        )
    upstream = state.upstreams[route.upstream]
    upstream_cfg = state.config.upstreams[route.upstream]
    if not isinstance(upstream, OpenAIUpstream) or not isinstance(
        upstream_cfg, OpenAIUpstreamConfig
    ):
        raise NotFound(
            f"{method} {path} is not available: route '{route.name}' serves chat completions "
            "only (its upstream is not an OpenAI-compatible API).",
            headers=route_header,
        )
    if rule == "check" and field is None:
        if path in CHECKABLE:
            raise MethodNotAllowed(
                f"Method {method} is not allowed for {scope['path']}.",
                headers={**route_header, "allow": "POST"},
            )
        # Only reachable with an unvalidated config: what cannot be checked is not relayed.
        raise EndpointNotAllowed(f"{method} {path} cannot be checked.", headers=route_header)

    timing = RequestTiming(context.start)
    pipeline = state.moderation
    policy: CompiledPolicy | None = None
    decisions: Decisions | None = None
    if pipeline is not None:
        policy = pipeline.policies.get(route.policy)
        decisions = Decisions(policy=policy)
    tracer = _tracer(request)
    content: bytes | AsyncIterator[bytes] | None = raw
    if raw is None and _has_body(scope):
        content = await _request_body(request.receive)
    target = _target(scope, prefix)

    def call_upstream() -> Coroutine[Any, Any, RelayedResponse]:
        return _send(
            upstream,
            upstream_cfg,
            method,
            target,
            scope["headers"],
            content,
            timing,
            tracer,
            model,
            path,
        )

    early: asyncio.Task[RelayedResponse] | None = None
    if rule == "check" and decisions is not None and pipeline is not None:
        assert field is not None and raw is not None
        if data is None:
            _json_object(raw, strict=True)  # raises the 400 naming the problem
        assert data is not None
        checked = ChatCall(
            tenant=tenant,
            route=route,
            body=ChatBody(raw, data, model or "", [], False, False),
            headers=scope["headers"],
            request_id=context.request_id,
            context=context,
        )
        if decisions.policy.input.parallel and decisions.policy.input.enabled:
            # As for chat: the upstream works while the guard decides; nothing of its answer
            # goes out before the verdict, and an unsafe verdict cancels it.
            early = asyncio.ensure_future(call_upstream())
        try:
            await _check(pipeline, checked, decisions, field, data, timing, tracer, route_header)
        except BaseException as exc:
            if early is not None:
                await _abandon(early)
            if isinstance(exc, (ContentPolicyViolation, GuardUnavailableError)):
                pipeline.report(checked, decisions, timing)  # audit, metrics, log: as chat
            raise
        pipeline.report(checked, decisions, timing)

    pending = early if early is not None else call_upstream()
    if isinstance(content, bytes) or content is None:
        # The body is in: the client's connection is free to watch for a disconnect while the
        # upstream works (during a streamed upload, the upload itself notices one).
        try:
            relayed = await until_disconnect(pending, request.receive)
        except BaseException:
            if early is not None:  # it may have answered just before the client left
                await _abandon(early)
            raise
    else:
        relayed = await pending
    extra: RawHeaders = [(ROUTE_HEADER, route.name.encode())]
    if decisions is not None:
        extra.extend(_labelled(decisions, timing.server_timing()))
        if decisions.input is None:  # checked requests have the pipeline's summary
            context.moderation = _unchecked_summary(decisions.policy, timing)
    else:
        extra.append((b"x-guardline-input", UNCHECKED.encode()))
    return PassthroughResponse(relayed, extra, timing)


async def _abandon(task: asyncio.Task[RelayedResponse]) -> None:
    """Cancel an upstream call started early; if it already answered, close that answer."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        relayed = await task
        await relayed.aclose()


# --- routing helpers ------------------------------------------------------------------------


def _explicit_route_method(request: Request) -> None:
    """A path an explicit route serves, asked with another method: 405 as before the catch-all."""
    state = request.app.state
    explicit: tuple[dict[str, set[str]], list[Route]] | None = getattr(state, _EXPLICIT, None)
    if explicit is None:  # once per app: the routing table is fixed at start-up
        static: dict[str, set[str]] = {}
        templated: list[Route] = []
        for route in request.app.router.routes:
            if not isinstance(route, Route) or route.endpoint is passthrough:
                continue
            if route.param_convertors:
                templated.append(route)
            else:
                static.setdefault(route.path, set()).update(route.methods or ())
        explicit = (static, templated)
        setattr(state, _EXPLICIT, explicit)
    static, templated = explicit
    methods = static.get(request.scope["path"])
    if methods is None:
        for route in templated:
            if route.matches(request.scope)[0] is Match.PARTIAL:
                methods = set(route.methods or ())
                break
    if methods is not None and request.scope["method"] not in methods:
        raise MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}.",
            headers={"allow": ", ".join(sorted(methods))},
        )


_EXPLICIT = "guardline_explicit_paths"


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bool(value.strip() != b"0")
        if name == b"transfer-encoding":
            return True
    return False


# A streamed request body goes upstream in pieces of up to this size: what arrived while the
# previous piece was written is sent in one write, and a body no larger than this is sent
# with its head in one write. Memory per request stays bounded by it, whatever the upload.
_PIECE = 256 * 1024


async def _request_body(receive: Receive) -> bytes | AsyncIterator[bytes]:
    """The body as it arrives: bytes when it is complete within the first piece, else an
    iterator that yields pieces as the client sends them (never the whole body at once)."""
    first, more = await _piece(receive)
    if not more:
        return first

    async def pieces() -> AsyncIterator[bytes]:
        yield first
        more = True
        while more:
            piece, more = await _piece(receive)
            if piece:
                yield piece

    return pieces()


async def _piece(receive: Receive) -> tuple[bytes, bool]:
    """Body messages up to _PIECE bytes (or the end): (bytes, more to come)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            parts.append(chunk)
            size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or size >= _PIECE:
            return (parts[0] if len(parts) == 1 else b"".join(parts)), more


def _target(scope: Scope, prefix: str) -> bytes:
    """The raw path below `{prefix}/v1`, with the query string, as the client sent them."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    below = raw_path[len(prefix.encode()) + len(b"/v1") :]
    query: bytes = scope.get("query_string", b"")
    return below + b"?" + query if query else below


def _tracer(request: Request) -> Tracer | None:
    obs = getattr(request.app.state, "observability", None)
    return getattr(obs, "tracer", None)


# --- check ----------------------------------------------------------------------------------


def _json_object(raw: bytes, *, strict: bool = False) -> dict[str, Any] | None:
    """The body as a JSON object; None (or with `strict` the 400) when it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if strict:
            raise InvalidJSON(
                f"We could not parse the JSON body of your request. ({exc.msg})"
            ) from None
        return None
    if not isinstance(data, dict):
        if strict:
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
        return None
    return data


def _texts(field: str, data: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(param, text)], [params the guard cannot read]) of the body's text input."""
    if field not in data:
        raise InvalidField(
            f"Missing required parameter: '{field}'.",
            param=field,
            code="missing_required_parameter",
        )
    value = data[field]
    if isinstance(value, str):
        return [(field, value)], []
    if field == "input" and isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(f"{field}[{i}]", v) for i, v in enumerate(value)], []
        tokens = all(isinstance(v, int) for v in value) or all(
            isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value
        )
        if tokens:  # token ids: the guard reads text only
            return [], [field]
    expected = (
        "a string, an array of strings, or an array of token arrays"
        if field == "input"
        else "a string"
    )
    raise InvalidField(f"Invalid type for '{field}': expected {expected}.", param=field)


async def _check(
    pipeline: ModerationPipeline,
    call: ChatCall,
    decisions: Decisions,
    field: str,
    data: dict[str, Any],
    timing: RequestTiming,
    tracer: Tracer | None,
    route_header: dict[str, str],
) -> None:
    """Judge the body's text like a chat prompt; raises the block (400) or the guard's 503."""
    policy = decisions.policy
    texts, uncheckable = _texts(field, data)
    if uncheckable and policy.input.on_uncheckable == "refuse":
        param = uncheckable[0]
        raise InvalidField(
            f"{param}: this content type cannot be checked by the content guard, and the "
            f"policy {policy.ref} refuses what it cannot check.",
            param=param,
            code="unsupported_content",
            headers=route_header,
        )
    decisions.unchecked = tuple(uncheckable)
    unique = list(dict.fromkeys(text for _, text in texts if text.strip()))
    if not policy.input.enabled or not unique:
        decisions.input = skipped("input")
        return
    spans = ModerationSpans(tracer)
    try:
        results = await asyncio.gather(
            *(
                spans.check(
                    "input",
                    pipeline.engine,
                    GuardRequest(prompt=text),
                    policy,
                    timing,
                    "guard-input",
                )
                for text in unique
            )
        )
    except GatewayError as exc:  # the guard failed and the policy fails closed: 503
        timing.finish()
        exc.headers.update(_dict(_labelled(decisions, timing.server_timing())))
        exc.headers.update(route_header)
        raise
    for result in results:  # a shadow policy judges the same texts, as for chat
        if result.request is not None:
            pipeline.shadows.run(call, policy, result.request, result)
    decisions.input = _combined(results)
    if decisions.input.flagged:
        timing.finish()
        decisions.output = skipped("output")
        error = input_violation(policy, decisions.input.categories)
        error.param = _flagged_param(texts, decisions.input)
        error.headers.update(_dict(_labelled(decisions, timing.server_timing())))
        error.headers.update(route_header)
        raise error
    if decisions.unchecked and decisions.input.status == "safe":
        # Like chat: forwarded parts the guard never saw are never reported as plainly safe.
        decisions.input = StageResult(
            stage="input",
            status="degraded",
            verdict=decisions.input.verdict,
            guard_ms=decisions.input.guard_ms,
            request=decisions.input.request,
        )


def _combined(results: list[StageResult]) -> StageResult:
    """One stage result for several judged texts: unsafe beats degraded beats safe."""
    for status in ("unsafe", "degraded"):
        for result in results:
            if result.status == status:
                return result
    return results[0]


def _flagged_param(texts: list[tuple[str, str]], result: StageResult) -> str | None:
    if result.request is None:
        return None
    return next((param for param, text in texts if text == result.request.prompt), None)


def _labelled(decisions: Decisions, server_timing: str | None = None) -> RawHeaders:
    """The moderation headers with the truth about these endpoints: the answer is unchecked,
    and so is an input no rule asked to check (`pass`), rather than `skipped`."""
    out: RawHeaders = []
    for name, value in decisions.headers(server_timing):
        if name == b"x-guardline-output" or (
            name == b"x-guardline-input" and decisions.input is None
        ):
            value = UNCHECKED.encode()
        out.append((name, value))
    return out


def _dict(headers: RawHeaders) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers}


def _unchecked_summary(policy: CompiledPolicy, timing: RequestTiming) -> ModerationSummary:
    """The request log's moderation fields for a `pass` request (a checked one reports its
    decision through the pipeline instead)."""
    return ModerationSummary(
        policy=policy.ref,
        input=UNCHECKED,
        output=UNCHECKED,
        categories=(),
        degraded=(),
        stream=False,
        model="",
        timing=timing,
    )


# --- upstream -------------------------------------------------------------------------------


async def _send(
    upstream: OpenAIUpstream,
    cfg: OpenAIUpstreamConfig,
    method: str,
    target: bytes,
    client_headers: RawHeaders,
    content: bytes | AsyncIterator[bytes] | None,
    timing: RequestTiming,
    tracer: Tracer | None,
    model: str | None,
    path: str,
) -> RelayedResponse:
    """The upstream call in a CLIENT span (its traceparent goes upstream), timed as upstream.

    With a known length the first body chunk is read too: a small answer is then complete
    before the response starts, and goes out without a disconnect watcher of its own."""
    headers = request_headers(upstream, client_headers)
    span = start_child(tracer, tracing.SPAN_UPSTREAM, SpanKind.CLIENT) if tracer else None
    if span is not None:
        headers = with_trace_headers(headers, carrier(span))
    started = time.perf_counter()
    try:
        relayed = await relay(
            upstream, upstream_url(cfg.base_url, target), method, headers, content
        )
    except BaseException as exc:
        timing.add("upstream", started, time.perf_counter())
        if span is not None:
            end_span(span, None, exc)
        raise
    timing.add("upstream", started, time.perf_counter())
    if span is not None:
        status = relayed.status

        def annotate(otel_span: Span) -> None:
            tracing.set_upstream_attributes(
                otel_span, provider="openai", request_model=model, operation=path
            )
            otel_span.set_attribute("http.response.status_code", status)

        def ended() -> None:  # the span covers the whole body, like chat's
            end_span(span, annotate)

        relayed.on_end = ended
    if relayed.length:
        try:
            await relayed.prefetch()
        except BaseException:
            await relayed.aclose()
            raise
        finally:
            timing.add("upstream", started, time.perf_counter())
    return relayed


class PassthroughResponse(Response):
    """Relays a RelayedResponse as it arrives; the client leaving closes the upstream at once.

    An upstream that breaks mid-body cannot change the status any more: the connection to the
    client is closed without the body's end, so the client sees a truncated answer, never a
    complete-looking one.
    """

    def __init__(self, relayed: RelayedResponse, extra: RawHeaders, timing: RequestTiming) -> None:
        self.relayed = relayed
        self.timing = timing
        self.status_code = relayed.status
        self.background = None
        self.raw_headers = relayed.headers + extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relayed = self.relayed
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            remaining = relayed.length
            if remaining == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            first = relayed.first
            if first is not None and remaining is not None:
                remaining -= len(first)
                if remaining <= 0:  # the whole answer was in the first chunk
                    await send({"type": "http.response.body", "body": first, "more_body": False})
                    await _drain(relayed.chunks())
                    return
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async with CancelOnDisconnect(receive):
                await self._pump(relayed.chunks(), remaining, send)
        except ClientDisconnected:
            pass
        finally:
            self.timing.finish()
            await relayed.aclose()

    async def _pump(self, body: AsyncIterator[bytes], remaining: int | None, send: Send) -> None:
        """Chunks as they arrive; with a known length the last one ends the response (one
        ASGI message less than an empty closing one)."""
        timing = self.timing
        while True:
            started = time.perf_counter()
            try:
                chunk = await body.__anext__()
            except StopAsyncIteration:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            finally:
                timing.add("upstream", started, time.perf_counter())
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    await _drain(body)
                    return
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read a complete body's (empty) end, so that its connection goes back to the pool."""
    async for _ in body:
        pass
