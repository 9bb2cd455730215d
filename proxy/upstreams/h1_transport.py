"""A lean HTTP/1.1 transport for httpx: pooled keep-alive connections on asyncio protocols.

httpx's default transport (httpcore over anyio and h11) costs several hundred microseconds of
CPU per request on the gateway's small machines, more than everything else the passthrough
does together. The gateway sends plain requests to fixed upstreams (chat: a POST with a known
body; the passthrough endpoints: any method, bodies also streamed, chunked without a
length), so this transport does only that, directly on `asyncio.Protocol` with the
`httptools` response parser, and stays behind httpx's public transport interface: the
client, its timeouts and the exceptions it raises are httpx's own, and tests can still swap
in `httpx.MockTransport`.

Behaviour that matters to the proxy:
- a response body is streamed as it arrives (flow-controlled, see `h1_connection`);
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
from typing import Any

import httpx

from proxy.upstreams.h1_connection import Connection, wait_for

_Key = tuple[str, str, int]


class _Body(httpx.AsyncByteStream):
    """A response body read straight off its connection; releases the connection at the end."""

    def __init__(self, pool: H1Transport, key: _Key, conn: Connection, limit: float | None) -> None:
        self._pool = pool
        self._key = key
        self._conn: Connection | None = conn
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
        self._idle: dict[_Key, list[Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def _acquire(self, key: _Key, timeouts: dict[str, Any]) -> Connection:
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
                await wait_for(
                    waiter, timeouts.get("pool"), httpx.PoolTimeout, "no free connection"
                )
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # we were handed a free slot but cannot use it: pass it on
                raise
        self._open += 1
        try:
            return await self._connect(key, timeouts.get("connect"))
        except BaseException:
            self.forget()
            raise

    async def _connect(self, key: _Key, limit: float | None) -> Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._ssl_context() if scheme == "https" else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(loop),
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

    def put_idle(self, key: _Key, conn: Connection) -> None:
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
        head_done = conn.start()
        try:
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
                # A streamed body (the passthrough endpoints' uploads): written as it comes,
                # in chunked framing when it has no Content-Length (httpx then asks for it).
                conn.transport.write(b"".join(lines))
                chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
                async for part in request.stream:  # type: ignore[union-attr]
                    if chunked:
                        if not part:
                            continue  # an empty chunk would end the body
                        part = b"%x\r\n%b\r\n" % (len(part), part)
                    conn.transport.write(part)
                    await conn.drain(timeouts.get("write"))
                if chunked:
                    conn.transport.write(b"0\r\n\r\n")
            await conn.drain(timeouts.get("write"))
            if conn.closed and not head_done.done():
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            await wait_for(
                head_done,
                timeouts.get("read"),
                httpx.ReadTimeout,
                "timed out waiting for a response",
            )
        except BaseException:
            if not head_done.done():
                head_done.cancel()  # nobody will await it: no "exception never retrieved"
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
