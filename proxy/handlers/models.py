"""`GET {prefix}/v1/models`: the models the caller's routes offer, in OpenAI's list shape."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.state import get_state


async def list_models(request: Request) -> Response:
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    prefix, _ = state.router.split_path(request.scope["path"])
    data = [
        {"id": model, "object": "model", "created": state.started_at, "owned_by": "guardline"}
        for model in state.router.models_for(prefix, tenant)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
