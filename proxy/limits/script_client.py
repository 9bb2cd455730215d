"""One Lua script called over redis-py connections, with as little work per call as possible.

The limits make one Redis call per request, so the client's own CPU is on every request's
path. A profile of `Redis.evalsha` (redis-py 8.1) per call: the pool checkout and return (a
lock, observability counters), packing every argument through the generic encoder, and, with
a socket timeout set, an `asyncio.wait_for` task for the write and a second timer for the read.
Here instead:

- connections are redis-py's own (`ConnectionPool.from_url` parses the URL: host, port, db,
  password, TLS, unix socket; `Connection` connects and runs the handshake), but they are kept
  in a plain free list: a call takes one, or opens a new one when all are busy (concurrent
  requests each have their own, so nothing queues behind a slow call);
- the caller hands over the command's RESP bytes already packed (`bulk`, and the caller caches
  the parts that repeat, such as a tenant's keys), so a call only joins bytes;
- the connections have no socket timeout: one `asyncio.timeout` around the whole call (connect,
  write, read) is the only timer, and a call that times out or fails closes its connection
  (its reply could still arrive and would be read by the next call) rather than reusing it;
- EVALSHA, and EVAL with the script's text only when Redis answers NOSCRIPT (after a restart
  or SCRIPT FLUSH: EVAL also puts the script back in Redis's cache).
"""

from __future__ import annotations

import asyncio
import contextlib
from hashlib import sha1
from typing import Any


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ScriptClient:
    def __init__(self, url: str, script: str, *, timeout_s: float) -> None:
        from redis.asyncio import ConnectionPool
        from redis.backoff import NoBackoff
        from redis.exceptions import NoScriptError, ResponseError
        from redis.retry import Retry

        # Imported here, not at module level: a gateway without Redis never loads redis-py.
        self._no_script: type[Exception] = NoScriptError
        self._error_reply: type[Exception] = ResponseError

        # Only used for its URL parsing and connection settings, never to check out.
        self._settings: Any = ConnectionPool.from_url(
            url,
            socket_timeout=None,  # the call's own asyncio.timeout bounds every read and write
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        body = script.encode()
        # Redis names cached scripts by their SHA-1 (an id, not a security use).
        sha = sha1(body, usedforsecurity=False).hexdigest()
        self._evalsha = bulk(b"EVALSHA") + bulk(sha.encode())
        self._eval = bulk(b"EVAL") + bulk(body)
        self._timeout_s = timeout_s
        self._idle: list[Any] = []  # connected, nothing pending: ready for a call
        self._open: set[Any] = set()  # every connection not closed yet (for aclose)

    async def run(self, count: int, numkeys: int, parts: bytes) -> Any:
        """EVALSHA the script: `parts` holds the `count` RESP bulks after numkeys (the keys,
        then the arguments). Raises on connection errors, timeouts and script errors."""
        tail = bulk(b"%d" % numkeys) + parts
        header = b"*%d\r\n" % (count + 3)
        try:
            return await self._roundtrip(header + self._evalsha + tail)
        except self._no_script:
            return await self._roundtrip(header + self._eval + tail)

    async def ping(self) -> bool:
        return bool(await self._roundtrip(b"*1\r\n$4\r\nPING\r\n"))

    async def _roundtrip(self, packed: bytes) -> Any:
        if self._idle:
            conn = self._idle.pop()
            # A connection that is already up has only the call itself to do.
            limit = self._timeout_s
        else:
            conn = self._settings.make_connection()
            self._open.add(conn)
            limit = self._timeout_s * 2  # connect and handshake first
        try:
            async with asyncio.timeout(limit):
                await conn.send_packed_command(packed, check_health=False)
                reply = await conn.read_response()
        except self._error_reply:
            self._idle.append(conn)  # an error reply: the connection is in step
            raise
        except BaseException:
            # Timed out, cancelled or broken: a reply may still be on its way; never reuse.
            self._open.discard(conn)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        return reply

    async def aclose(self) -> None:
        self._idle.clear()
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self._open.clear()
