"""`POST {prefix}/v1/moderations`: OpenAI-compatible moderation by the route's policy."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.context import request_context
from proxy.errors import InvalidField, InvalidJSON, NotFound
from proxy.moderation.headers import Decisions
from proxy.moderation.moderations import moderate
from proxy.state import get_state


async def create_moderation(request: Request) -> Response:
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    if state.moderation is None:
        raise NotFound("Moderation is not enabled on this gateway.")
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"We could not parse the JSON body of your request. ({exc.msg})"
        ) from None
    if not isinstance(data, dict) or "input" not in data:
        raise InvalidField(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if data.get("model") is not None and not isinstance(data["model"], str):
        raise InvalidField("Invalid type for 'model': expected a string.", param="model")
    prefix, _ = state.router.split_path(request.scope["path"])
    # The moderation model names the guard, not a chat model: routes match on path and tenant.
    route = state.router.match(prefix, tenant, None)
    # For the request log, the request metrics and the SERVER span, as chat requests do.
    context = request_context(request.scope)
    context.route, context.tenant = route.name, tenant
    policy = state.moderation.policies.get(route.policy)
    body, stages = await moderate(
        state.moderation, policy, data["input"], max_inputs=state.config.moderations.max_inputs
    )
    decisions = Decisions(policy=policy, input=stages[0] if len(stages) == 1 else None)
    headers = decisions.header_dict()
    headers["x-guardline-route"] = route.name
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)
