"""`POST {prefix}/v1/chat/completions`: authenticate, parse, route, call the chat service, relay."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.disconnect import until_disconnect
from proxy.forward import ChatCall
from proxy.observability.asgi import STATE_ROUTE, STATE_TENANT, request_start
from proxy.relay import ReplyResponse
from proxy.request_body import parse_chat_body
from proxy.state import get_state

ROUTE_HEADER = b"x-guardline-route"


async def chat_completions(request: Request) -> Response:
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    scope_state = request.scope["state"]
    if tenant is not None:  # for the SERVER span, the request metrics and the request log
        scope_state[STATE_TENANT] = tenant
    prefix, _ = state.router.split_path(request.scope["path"])
    body = parse_chat_body(await request.body())
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
    )
    reply = await until_disconnect(state.chat_service(state, call), request.receive)
    return ReplyResponse(reply, [(ROUTE_HEADER, route.name.encode())])
