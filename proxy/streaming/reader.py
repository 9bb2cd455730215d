"""Reads an upstream byte stream one chunk at a time, optionally in the background.

While a guard check runs, the stream keeps reading upstream (a read is left pending in a task
and awaited together with the check), so a slow guard never stalls the upstream connection.
Outside checks, reads are awaited directly: no task per chunk on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


def describe_error(exc: BaseException) -> str:
    """A short reason for `outcome.upstream_error` and the client's error event."""
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class UpstreamReader:
    __slots__ = ("_closed", "_it", "_task")

    def __init__(self, upstream: AsyncIterator[bytes]) -> None:
        self._it = upstream
        self._task: asyncio.Task[bytes | None] | None = None
        self._closed = False

    async def read(self) -> bytes | None:
        """The next chunk, None at EOF. Upstream exceptions propagate."""
        task = self._task
        if task is not None:
            self._task = None
            return await task
        return await self._next()

    def pending(self) -> asyncio.Task[bytes | None]:
        """The in-flight read (started if needed), to wait on beside a guard check."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._next())
        return self._task

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._it)
        except StopAsyncIteration:
            return None

    async def drain(self, budget_s: float = 0.25) -> None:
        """After `[DONE]`: reads the upstream to its EOF (normally already in the socket) so an
        HTTP/1.1 connection can go back to its pool instead of being closed half-read. Bounded,
        so an upstream that keeps the stream open after `[DONE]` cannot hold the response."""
        try:
            async with asyncio.timeout(budget_s):
                while not self._closed and await self.read() is not None:
                    pass
        except Exception:
            pass  # nothing more is forwarded; aclose() releases whatever is left
        await self.aclose()

    async def aclose(self) -> None:
        """Stops reading and closes the upstream generator so its connection is released now.

        Idempotent: the stream closes upstream as soon as it has read all it needs, and again
        (a no-op) on its way out.
        """
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            if not task.done():
                task.cancel()
            # Retrieve the outcome (result, error or cancellation) so nothing is left unobserved.
            await asyncio.gather(task, return_exceptions=True)
        close = getattr(self._it, "aclose", None)
        if close is not None:
            # A failure while tearing down the upstream is not the client's concern: the stream
            # has already ended for it, one way or another.
            with contextlib.suppress(Exception):
                await close()
