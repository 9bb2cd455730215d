"""`POST {prefix}/v1/chat/completions`: authenticate, parse, route, call the chat service, relay.

`serve` is that sequence for any API shape; the Responses and legacy completions handlers use
it with their own parser and API adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from proxy.chat_call import ChatCall
from proxy.context import request_context
from proxy.disconnect import until_disconnect
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
    context = request_context(request.scope)
    context.tenant = tenant  # for the SERVER span, the request metrics and the request log
    prefix, _ = state.router.split_path(request.scope["path"])
    body = parse(await request.body())
    route = state.router.match(prefix, tenant, body.model)
    context.route = route.name
    call = ChatCall(
        tenant=tenant,
        route=route,
        body=body,
        headers=request.scope["headers"],
        request_id=context.request_id,
        context=context,
        api=api,
    )
    reply = await until_disconnect(state.chat_service(state, call), request.receive)
    return ReplyResponse(reply, [(ROUTE_HEADER, route.name.encode())])


async def chat_completions(request: Request) -> Response:
    return await serve(request, parse_chat_body, None)
