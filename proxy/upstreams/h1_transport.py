"""A lean HTTP/1.1 transport for httpx: pooled keep-alive connections on asyncio protocols.

httpx's default transport (httpcore over anyio and h11) costs several hundred microseconds of
CPU per request on the gateway's small machines, more than everything else the passthrough
does together. The gateway sends one kind of request (a POST with a known body to a fixed
upstream), so this transport does only that, directly on `asyncio.Protocol` with the
`httptools` response parser, and stays behind httpx's public transport interface: the
client, its timeouts and the exceptions it raises are httpx's own, and tests can still swap
in `httpx.MockTransport`.

Behaviour that matters to the proxy:
- a response body is streamed as it arrives (flow-controlled: reading pauses while more than
  `_HIGH_WATER` bytes wait for the consumer);
- closing a response before its end closes the connection, which is how the upstream learns
  at once that the client went away;
- a connection goes back to the pool only after a complete response that allows keep-alive,
  and idle connections older than `keepalive_expiry` are dropped (below the common 5 s
  server keep-alive, so a request rarely meets a connection the server is closing).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

_HIGH_WATER = 256 * 1024
_Key = tuple[str, str, int]


class _Connection(asyncio.Protocol):
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
        self._head = self.loop.create_future()
        return self._head

    def response_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        return self._status, self._headers

    async def drain(self, limit: float | None) -> None:
        if not self._write_paused or self.closed:
            return
        self._drain = self.loop.create_future()
        await _wait(self._drain, limit, httpx.WriteTimeout, "timed out writing the request")

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
            await _wait(self._waiter, limit, httpx.ReadTimeout, "timed out reading the response")

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


async def _wait(
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


class _Body(httpx.AsyncByteStream):
    """A response body read straight off its connection; releases the connection at the end."""

    def __init__(
        self, pool: H1Transport, key: _Key, conn: _Connection, limit: float | None
    ) -> None:
        self._pool = pool
        self._key = key
        self._conn: _Connection | None = conn
        self._timeout = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while (chunk := await conn.next_chunk(self._timeout)) is not None:
                yield chunk
        except httpx.TransportError:
            self._release(reuse=False)
            raise
        self._release(reuse=True)

    async def aclose(self) -> None:
        # Closing before the end drops the connection: the upstream sees the disconnect.
        self._release(reuse=False)

    def _release(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if reuse and conn.complete and conn.keep_alive and not conn.closed:
            self._pool.put_idle(self._key, conn)
        else:
            conn.abort()
            self._pool.forget()


class H1Transport(httpx.AsyncBaseTransport):
    """Pooled HTTP/1.1 connections per (scheme, host, port), for `httpx.AsyncClient(transport=)`."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def _acquire(self, key: _Key, timeouts: dict[str, Any]) -> _Connection:
        while True:
            idle = self._idle.get(key)
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self._expiry:
                    return conn
                conn.abort()
                self._open -= 1
            if self._open < self._max:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await _wait(waiter, timeouts.get("pool"), httpx.PoolTimeout, "no free connection")
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(key, timeouts.get("connect"))
        except BaseException:
            self.forget()
            raise

    async def _connect(self, key: _Key, limit: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._ssl_context() if scheme == "https" else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                limit,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return protocol

    def put_idle(self, key: _Key, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            self.forget()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(conn)
        self._wake_one()

    def forget(self) -> None:
        """A connection was closed: make room for a waiting request."""
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        conn = await self._acquire(key, timeouts)
        try:
            head_done = conn.start()
            lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
            lines.extend(b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw)
            lines.append(b"\r\n")
            assert conn.transport is not None
            try:
                # A body already in memory goes out with the head in one write (one segment,
                # one wake-up of the upstream instead of two).
                lines.append(request.content)
                conn.transport.write(b"".join(lines))
            except httpx.RequestNotRead:
                conn.transport.write(b"".join(lines))
                async for part in request.stream:  # type: ignore[union-attr]
                    conn.transport.write(part)
                    await conn.drain(timeouts.get("write"))
            await conn.drain(timeouts.get("write"))
            if conn.closed and not head_done.done():
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            await _wait(
                head_done,
                timeouts.get("read"),
                httpx.ReadTimeout,
                "timed out waiting for a response",
            )
        except BaseException:
            conn.abort()
            self.forget()
            raise
        status, headers = conn.response_head()
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(self, key, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
