"""`GET /healthz` (the process answers) and `GET /readyz` (every readiness probe passes)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.state import get_state

log = logging.getLogger("guardline.health")

_OK = orjson.dumps({"status": "ok"})


async def healthz(request: Request) -> Response:
    return Response(_OK, media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready or not (the status code probes read); the per-check details only for the admin
    when `server.admin_key` is set."""
    state = get_state(request)
    ready = True
    checks: dict[str, Any] = {}
    for probe in state.readiness:
        try:
            ok, detail = await probe()
        except Exception as exc:
            # A broken probe means "not ready", never a 500.
            log.exception("readiness probe failed")
            ok, detail = False, {getattr(probe, "__name__", "probe"): {"error": repr(exc)}}
        ready = ready and ok
        checks.update(detail)
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready"}
    if state.admin.allows(request):
        body["checks"] = checks
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )
