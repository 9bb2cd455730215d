"""`POST {prefix}/v1/completions`: legacy completions, moderated like chat (proxy.apis)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.apis.completions import COMPLETIONS, parse_completions_body
from proxy.handlers.chat import serve


async def create_completion(request: Request) -> Response:
    return await serve(request, parse_completions_body, COMPLETIONS)
