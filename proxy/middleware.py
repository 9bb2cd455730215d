"""The gateway's outermost ASGI middleware (pure ASGI, no BaseHTTPMiddleware).

Per HTTP request it:
- assigns a request id, kept in the request's context (`proxy.context`) and returned as
  `x-guardline-request-id`;
- enforces `server.max_body_bytes`: a declared Content-Length over the limit is refused before
  any byte is read, and a body sent without one is counted as it arrives (413 either way);
- renders every failure to the OpenAI error envelope: GatewayError subclasses with their own
  status, anything unexpected as a 500 without details (the traceback goes to the log only),
  a request the server cancels at its shutdown deadline as a 503 `server_shutting_down`;
- once the response is out, runs the work the request deferred until then (metrics, audit
  records): every app has this middleware, so nothing recorded depends on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.context import RequestContext, request_context
from proxy.disconnect import ClientDisconnected
from proxy.errors import GatewayError, InternalError, PayloadTooLarge, ShuttingDown

log = logging.getLogger("guardline.proxy")

REQUEST_ID_HEADER = b"x-guardline-request-id"


def error_messages(
    exc: GatewayError, extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[Message, Message]:
    """The ASGI start and body messages rendering `exc` (the one renderer)."""
    body = exc.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers.items()),
        *(extra or ()),
    ]
    return (
        {"type": "http.response.start", "status": exc.status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


async def send_error(send: Send, exc: GatewayError) -> None:
    start, body = error_messages(exc)
    await send(start)
    await send(body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = request_context(scope)
        context.request_id = os.urandom(8).hex()
        try:
            await self._serve(scope, receive, send, context)
        finally:
            context.run_after_response()

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        request_id = context.request_id
        rid_header = (REQUEST_ID_HEADER, request_id.encode())
        limit = self.max_body_bytes
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await send_error(send_wrapper, _too_large(limit))
                    return
                break

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        try:
            await self.app(scope, limited_receive, send_wrapper)
        except (ClientDisconnected, ClientDisconnect):
            # Nobody is listening; the upstream call was already cancelled. The outer
            # middlewares record the request as 499, not as a failure of ours.
            if not started:
                context.client_closed = True
            return
        except asyncio.CancelledError:
            # The server cancelled the request (graceful-shutdown deadline); a client that left
            # arrives as ClientDisconnected instead. Answer what has not been answered yet.
            if not started:
                with contextlib.suppress(Exception):
                    await send_error(send_wrapper, ShuttingDown())
            raise
        except GatewayError as exc:
            if started:
                log.warning("error after the response started: %r", exc)
                return
            await send_error(send_wrapper, exc)
        except Exception:
            log.exception("unhandled error (request %s)", request_id)
            if not started:
                await send_error(
                    send_wrapper,
                    InternalError("The server had an error while processing your request."),
                )
