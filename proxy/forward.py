"""The chat service: one authenticated, routed chat request -> the upstream's reply.

Handlers call `state.chat_service(state, call)`, which is `forward_chat` unless something
(the moderation pipeline) wraps it: a wrapper receives the same `ChatCall`, may refuse it,
calls `forward_chat`, and may inspect or replace the returned `UpstreamReply`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.chat_call import ChatCall
from proxy.errors import GatewayError
from proxy.upstream_errors import redact_error, sanitize_error_reply
from proxy.upstreams.reply import UpstreamReply

if TYPE_CHECKING:
    from proxy.state import GatewayState


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
