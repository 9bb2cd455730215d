"""`POST {prefix}/v1/chat/completions`: authenticate, parse, route, call the chat service, relay."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.disconnect import until_disconnect
from proxy.forward import ChatCall
from proxy.relay import ReplyResponse
from proxy.request_body import parse_chat_body
from proxy.state import get_state

ROUTE_HEADER = b"x-guardline-route"


async def chat_completions(request: Request) -> Response:
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    prefix, _ = state.router.split_path(request.scope["path"])
    body = parse_chat_body(await request.body())
    route = state.router.match(prefix, tenant, body.model)
    call = ChatCall(
        tenant=tenant,
        route=route,
        body=body,
        headers=request.scope["headers"],
        request_id=request.scope["state"]["request_id"],
    )
    reply = await until_disconnect(state.chat_service(state, call), request.receive)
    return ReplyResponse(reply, [(ROUTE_HEADER, route.name.encode())])
