"""`POST {prefix}/v1/chat/completions`: authenticate, parse, route, call the chat service, relay.

`serve` is that sequence for any API shape; the Responses and legacy completions handlers use
it with their own parser and API adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from proxy.disconnect import until_disconnect
from proxy.forward import ChatCall
from proxy.observability.asgi import STATE_ROUTE, STATE_TENANT, request_start
from proxy.relay import ReplyResponse
from proxy.request_body import ChatBody, parse_chat_body
from proxy.state import get_state

if TYPE_CHECKING:
    from proxy.apis.base import ApiAdapter

ROUTE_HEADER = b"x-guardline-route"


async def serve(
    request: Request, parse: Callable[[bytes], ChatBody], api: ApiAdapter | None
) -> Response:
    """One request of `api`'s shape (None: chat completions): authenticate, parse, route, call
    the chat service, relay."""
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    scope_state = request.scope["state"]
    if tenant is not None:  # for the SERVER span, the request metrics and the request log
        scope_state[STATE_TENANT] = tenant
    prefix, _ = state.router.split_path(request.scope["path"])
    body = parse(await request.body())
    route = state.router.match(prefix, tenant, body.model)
    scope_state[STATE_ROUTE] = route.name
    call = ChatCall(
        tenant=tenant,
        route=route,
        body=body,
        headers=request.scope["headers"],
        request_id=scope_state["request_id"],
        started=request_start(request.scope),
        scope_state=scope_state,
        api=api,
    )
    reply = await until_disconnect(state.chat_service(state, call), request.receive)
    return ReplyResponse(reply, [(ROUTE_HEADER, route.name.encode())])


async def chat_completions(request: Request) -> Response:
    return await serve(request, parse_chat_body, None)
