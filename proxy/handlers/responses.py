"""`POST {prefix}/v1/responses`: the Responses API, through the same chat service as chat.

Authenticated, parsed (`proxy.apis.responses`), routed by model and passed to
`state.chat_service` with the Responses adapter, so moderation (when installed) treats it as it
treats chat completions; without moderation the body is relayed to `{base_url}/responses`.
`proxy.handlers.chat.serve` does the sequence, as for chat and legacy completions.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.apis.responses import RESPONSES, parse_responses_body
from proxy.handlers.chat import serve


async def create_response(request: Request) -> Response:
    return await serve(request, parse_responses_body, RESPONSES)
