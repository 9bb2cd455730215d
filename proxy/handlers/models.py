"""`GET {prefix}/v1/models`: the models the caller's routes offer, in OpenAI's list shape.

Models named in the config (upstream `models`, aliases, route `models`) are listed as they
are. A route that accepts any model on an `openai` upstream without a `models` list (the
bring-your-own-key drop-in in front of OpenAI) lists what that upstream itself answers, so
that clients filling a model picker see the real models, as they would without the gateway.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.client_headers import HeaderAllowList
from proxy.relay import ReplyResponse
from proxy.state import GatewayState, get_state
from proxy.upstream_errors import sanitize_error_reply
from proxy.upstreams.openai_upstream import OpenAIUpstream

log = logging.getLogger("guardline.models")

# A model listing carries no route's opt-ins: the default allow-list only.
_DEFAULT_ALLOW = HeaderAllowList()


def _open_upstreams(state: GatewayState, prefix: str, tenant: str | None) -> list[OpenAIUpstream]:
    """Upstreams of the caller's routes that take any model and list their own."""
    out: dict[str, OpenAIUpstream] = {}
    for route in state.router.routes:
        if route.path_prefix.rstrip("/") != prefix or route.models is not None:
            continue
        if route.tenants is not None and tenant not in route.tenants:
            continue
        upstream = state.upstreams.get(route.upstream)
        if isinstance(upstream, OpenAIUpstream) and upstream.offers_any_model:
            out.setdefault(route.upstream, upstream)
    return list(out.values())


async def list_models(request: Request) -> Response:
    state = get_state(request)
    tenant = state.authenticator.authenticate(request.headers.get("authorization"))
    prefix, _ = state.router.split_path(request.scope["path"])
    data: list[dict[str, Any]] = [
        {"id": model, "object": "model", "created": state.started_at, "owned_by": "guardline"}
        for model in state.router.models_for(prefix, tenant)
    ]
    upstreams = _open_upstreams(state, prefix, tenant)
    seen = {m["id"] for m in data}
    for upstream in upstreams:
        headers = request.scope["headers"]
        if upstream.uses_operator_key:
            headers = _DEFAULT_ALLOW.filter(headers)
        reply = sanitize_error_reply(
            await upstream.list_models(headers), state.redactor, upstream.name
        )
        if reply.status != 200:
            if not data and len(upstreams) == 1:
                return ReplyResponse(reply, [])  # e.g. the upstream's 401 for a bad BYOK key
            log.warning("upstream %s: GET /models answered %d", upstream.name, reply.status)
            continue
        try:
            listed = orjson.loads(reply.body).get("data", [])
        except (orjson.JSONDecodeError, AttributeError):
            log.warning("upstream %s: GET /models answered no model list", upstream.name)
            continue
        for model in listed:
            if isinstance(model, dict) and model.get("id") not in seen:
                seen.add(model.get("id"))
                data.append(model)
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
