"""One upstream HTTP/1.1 connection: an asyncio protocol feeding the httptools response parser.

Used by `proxy.upstreams.h1_transport`, which pools these connections. A connection reads one
response at a time: `start()` before sending a request, then the head, then body chunks as
they arrive (reading pauses while more than `_HIGH_WATER` bytes wait for the consumer). Every
failure is raised as the httpx exception a caller of an httpx transport expects.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

import httptools
import httpx

_HIGH_WATER = 256 * 1024


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response currently being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: Exception | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._status = 0
        self.keep_alive = False
        self._until_close = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        head_seen = self._head is not None and self._head.done()
        if not self._complete and self._until_close and head_seen:
            # A body with neither length nor chunking ends where the connection does.
            self._complete = True
            self.keep_alive = False
            self._wake()
        if not self._complete:
            if self._head is not None and not self._head.done():
                message = "Server disconnected without sending a response."
                self._fail(httpx.RemoteProtocolError(message))
            else:
                self._fail(httpx.RemoteProtocolError("peer closed connection mid-body"))
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read the parser's state inside its callbacks: once a whole message is parsed it
        # resets for the next one, and asking afterwards gives the wrong answers.
        self._status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self._until_close = (
            not any(
                name.lower() in (b"content-length", b"transfer-encoding")
                for name, _ in self._headers
            )
            and self._status not in (204, 304)
            and self._status >= 200
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        self._complete = True
        self._wake()

    # -- used by the transport ---------------------------------------------------------------

    def start(self) -> asyncio.Future[None]:
        """Reset for a new request; the returned future resolves when the head arrived."""
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._chunks.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._status = 0
        self.keep_alive = False
        self._until_close = False
        self._head = self.loop.create_future()
        return self._head

    def response_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        return self._status, self._headers

    async def drain(self, limit: float | None) -> None:
        if not self._write_paused or self.closed:
            return
        self._drain = self.loop.create_future()
        await wait_for(self._drain, limit, httpx.WriteTimeout, "timed out writing the request")

    async def next_chunk(self, limit: float | None) -> bytes | None:
        """The next body bytes, or None at the end of the response."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= _HIGH_WATER // 2:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return chunk
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = self.loop.create_future()
            await wait_for(self._waiter, limit, httpx.ReadTimeout, "timed out reading the response")

    @property
    def complete(self) -> bool:
        return self._complete

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)


async def wait_for(
    future: asyncio.Future[None],
    limit: float | None,
    error: type[httpx.TimeoutException],
    message: str,
) -> None:
    """Await `future`, failing it with `error` after `limit` seconds (a timer, no task)."""
    if limit is None:
        await future
        return

    def expire() -> None:
        if not future.done():
            future.set_exception(error(message))

    handle = future.get_loop().call_later(limit, expire)
    try:
        await future
    finally:
        handle.cancel()
