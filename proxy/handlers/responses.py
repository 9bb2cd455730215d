"""`POST {prefix}/v1/responses`: the Responses API, through the same chat service as chat.

Authenticated, parsed (`proxy.apis.responses`), routed by model and passed to
`state.chat_service` with the Responses adapter, so moderation (when installed) treats it as it
treats chat completions; without moderation the body is relayed to `{base_url}/responses`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.apis.responses import RESPONSES, parse_responses_body
from proxy.disconnect import until_disconnect
from proxy.forward import ChatCall
from proxy.handlers.chat import ROUTE_HEADER
from proxy.observability.asgi import STATE_ROUTE, STATE_TENANT, request_start
from proxy.relay import ReplyResponse
from proxy.state import get_state


async def create_response(request: Request) -> Response:
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    scope_state = request.scope["state"]
    if tenant is not None:
        scope_state[STATE_TENANT] = tenant
    prefix, _ = state.router.split_path(request.scope["path"])
    body = parse_responses_body(await request.body())
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
        api=RESPONSES,
    )
    reply = await until_disconnect(state.chat_service(state, call), request.receive)
    return ReplyResponse(reply, [(ROUTE_HEADER, route.name.encode())])
