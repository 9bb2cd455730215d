"""The chat service: one authenticated, routed chat request -> the upstream's reply.

Handlers call `state.chat_service(state, call)`, which is `forward_chat` unless something
(the moderation pipeline) wraps it: a wrapper receives the same `ChatCall`, may refuse it,
calls `forward_chat`, and may inspect or replace the returned `UpstreamReply`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.config_schema import RouteConfig
from proxy.errors import GatewayError
from proxy.request_body import ChatBody
from proxy.upstream_errors import redact_error, sanitize_error_reply
from proxy.upstreams.reply import RawHeaders, UpstreamReply

if TYPE_CHECKING:
    from proxy.apis.base import ApiAdapter
    from proxy.state import GatewayState


@dataclass(slots=True)
class ChatCall:
    """Everything known about one chat request once it is authenticated and routed."""

    tenant: str | None
    route: RouteConfig
    body: ChatBody
    headers: RawHeaders  # the client's request headers, names lower-case (ASGI)
    request_id: str
    # perf_counter() when the request's first byte arrived (the ObservabilityMiddleware's
    # clock), so that the timing ledger covers body reading, auth and routing too.
    started: float | None = None
    # The ASGI scope's per-request state, shared with the middlewares (request log, span).
    scope_state: dict[str, Any] | None = None
    # The API shape (proxy.apis): None is chat completions; the Responses API sets its own.
    api: ApiAdapter | None = None


ChatService = Callable[["GatewayState", ChatCall], Awaitable[UpstreamReply]]


async def forward_chat(state: GatewayState, call: ChatCall) -> UpstreamReply:
    """Send the call to its route's upstream. Raises GatewayError subclasses.

    The body goes unchanged; the client's headers are cut to the route's allow-list when the
    upstream is called with the operator's key. An error answer comes back with the config's
    secrets redacted (and a 5xx that is no OpenAI envelope wrapped in one).
    """
    upstream = state.upstreams[call.route.upstream]
    allow = state.header_allow_lists.get(call.route.name)
    headers = call.headers if allow is None else allow.filter(call.headers)
    try:
        if call.api is not None:  # another API shape (proxy.apis): its own upstream path
            reply = await call.api.send(upstream, call.body, headers)
        else:
            reply = await upstream.chat(call.body, headers)
    except GatewayError as exc:
        redact_error(exc, state.redactor)
        raise
    return sanitize_error_reply(reply, state.redactor, upstream.name)
