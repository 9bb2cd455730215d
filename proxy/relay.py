"""Writing an UpstreamReply to the client.

A complete body goes out in one message. A stream goes out chunk by chunk as the upstream
produces it, while the client connection is watched: when the client disconnects the stream
is dropped and the upstream connection closed at once. An error after the response started
cannot change the status any more, so it becomes one SSE error event and the stream ends.
That includes the server's graceful-shutdown deadline (`server.graceful_shutdown_s`): uvicorn
cancels the requests still running, and a stream then ends with one `server_shutting_down`
error event and a proper end of body instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.disconnect import CancelOnDisconnect, ClientDisconnected
from proxy.errors import GatewayError, InternalError, ShuttingDown
from proxy.upstreams.openai_upstream import error_event
from proxy.upstreams.reply import RawHeaders, UpstreamReply

log = logging.getLogger("guardline.relay")


class ReplyResponse(Response):
    """A Starlette response that relays an UpstreamReply, adding the gateway's headers."""

    def __init__(self, reply: UpstreamReply, extra_headers: RawHeaders) -> None:
        self.reply = reply
        self._stream_started = False
        self.status_code = reply.status
        self.background = None
        headers = reply.headers + extra_headers
        if reply.stream is None:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        self.raw_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = self.reply
        try:
            if reply.stream is None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": reply.status,
                        "headers": self.raw_headers,
                    }
                )
                await send({"type": "http.response.body", "body": reply.body})
            else:
                await self._relay_stream(reply.stream, receive, send)
        finally:
            await reply.aclose()

    async def _relay_stream(
        self, stream: AsyncIterator[bytes], receive: Receive, send: Send
    ) -> None:
        try:
            async with CancelOnDisconnect(receive):
                await self._pump(stream, send)
        except ClientDisconnected:
            pass  # the stream is dropped below; the middleware has nobody to answer
        except asyncio.CancelledError:
            # Not the client (CancelOnDisconnect turns that into ClientDisconnected): the
            # server cancelled the request, i.e. its shutdown deadline passed. Say so in the
            # stream and end it properly; before the start, GatewayMiddleware answers 503.
            if self._stream_started:
                with contextlib.suppress(Exception):
                    event = error_event(ShuttingDown())
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _pump(self, stream: AsyncIterator[bytes], send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self._stream_started = True
        try:
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except GatewayError as exc:
            await send({"type": "http.response.body", "body": error_event(exc), "more_body": True})
        except Exception:
            log.exception("stream relay failed")
            event = error_event(InternalError("The stream failed."))
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
