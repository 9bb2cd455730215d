"""Noticing a client that went away, so the upstream request is cancelled at once.

Once the request body is read, the next ASGI `receive()` only returns when the client
disconnects (or the response is complete). A watcher task waits for that and cancels the
request's own task, so whatever it is awaiting (the upstream response, the next stream chunk)
is abandoned, and with it the upstream connection, the moment the client leaves, instead of
paying for a completion nobody reads. One watcher task per request, no task for the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
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


class CancelOnDisconnect:
    """`async with CancelOnDisconnect(receive):` the body is cancelled if the client leaves,
    and ClientDisconnected is raised in its place."""

    __slots__ = ("_exited", "_receive", "_task", "_triggered", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._triggered = False
        self._exited = False

    def _on_done(self, watcher: asyncio.Future[None]) -> None:
        # `_exited`: a callback already scheduled when the block ended must not cancel
        # whatever the task does next.
        if self._exited or watcher.cancelled() or watcher.exception() is not None:
            return
        self._triggered = True
        self._task.cancel("client disconnected")

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.ensure_future(wait_disconnect(self._receive))
        self._watcher.add_done_callback(self._on_done)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exited = True
        self._watcher.cancel()
        if self._triggered:
            # Our own cancellation, not the server's: take it back and say what happened.
            self._task.uncancel()
            if exc_type is not None:
                raise ClientDisconnected() from None


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await `work`, cancelling it and raising ClientDisconnected if the client leaves first."""
    async with CancelOnDisconnect(receive):
        return await work
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: the with may swallow)
