"""Noticing a client that went away, so the upstream request is cancelled at once.

Once the request body is read, the next ASGI `receive()` only returns when the client
disconnects (or the response is complete). Racing it against the work in progress lets the
gateway drop the upstream call, and with it the upstream connection, the moment the client
leaves, instead of paying for a completion nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection; there is nobody to answer."""


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (body messages still arriving are discarded)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await `work`, cancelling it and raising ClientDisconnected if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected()
