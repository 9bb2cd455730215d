"""`POST {prefix}/v1/responses`: the Responses API, through the same chat service as chat.

Authenticated, parsed (`proxy.apis.responses`), routed by model and passed to
`state.chat_service` with the Responses adapter, so moderation (when installed) treats it as it
treats chat completions; without moderation the body is relayed to `{base_url}/responses`.
`serve` does the same for any API adapter (legacy completions use it too).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from proxy.apis.base import ApiAdapter
from proxy.apis.responses import RESPONSES, parse_responses_body
from proxy.disconnect import until_disconnect
from proxy.forward import ChatCall
from proxy.handlers.chat import ROUTE_HEADER
from proxy.observability.asgi import STATE_ROUTE, STATE_TENANT, request_start
from proxy.relay import ReplyResponse
from proxy.request_body import ChatBody
from proxy.state import get_state


async def serve(request: Request, parse: Callable[[bytes], ChatBody], api: ApiAdapter) -> Response:
    """One request of `api`'s shape: authenticate, parse, route, call the chat service, relay."""
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    scope_state = request.scope["state"]
    if tenant is not None:
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


async def create_response(request: Request) -> Response:
    return await serve(request, parse_responses_body, RESPONSES)
