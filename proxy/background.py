"""Background work that outlives the request that started it, and its end at shutdown.

Shadow checks, the settling of monitor-mode streams (their last guard check and audit record)
and THINK re-checks run after their response has gone out. They use the guard engine and the
audit writer, which the app closes at shutdown. So every such task is started through (or
registered with) the one `BackgroundTasks` of the gateway state, and the lifespan ends them
first: `aclose(timeout_s)` waits for them up to the graceful-shutdown deadline, then cancels
what is left and waits for the cancellations to finish. Only then are the upstream clients,
the engine and the audit writer closed; no task outlives what it uses.

A task cancelled here is logged by name (and counted in `cancelled`); a task that records its
own result (a monitor-mode stream's audit record) records the cancellation on its way out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("guardline.background")


class BackgroundTasks:
    """Strong references to running background tasks (the event loop keeps only weak ones, so
    an unreferenced task can be collected mid-flight) and their draining at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.cancelled: list[str] = []  # names of the tasks cancelled at shutdown

    @property
    def closing(self) -> bool:
        """Shutdown has passed the drain: new work would be cancelled before it ran."""
        return self._closing

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def spawn(
        self, work: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None] | None:
        """Run `work` as a task of the running loop; None (and `work` closed, never run) once
        the drain is over, since nothing would be left open for it to use."""
        if self._closing:
            work.close()  # never started: close it so it is not reported as never awaited
            log.warning("background task not started, the gateway is shutting down: %s", name)
            return None
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.track(task)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        """Register a task started elsewhere, so that shutdown waits for it or cancels it."""
        if task.done():
            return
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        if self._closing:
            task.cancel()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Retrieved here, so a failure is logged once, with its task, instead of as "Task
        # exception was never retrieved" whenever the task happens to be collected.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until no task is running, including tasks started meanwhile (a settling stream
        starts a THINK re-check). True when all finished within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    async def aclose(self, timeout_s: float) -> None:
        """Drain for up to `timeout_s`, then cancel the rest and wait until they have ended."""
        if await self.drain(timeout_s):
            self._closing = True
            return
        self._closing = True
        # A cancelled task may start another on its way out (spawn refuses it now, track
        # cancels it), so repeat until nothing is left.
        while self._tasks:
            tasks = set(self._tasks)
            for task in tasks:
                if not task.done() and task.cancel():
                    name = task.get_name()
                    self.cancelled.append(name)
                    log.warning("background task cancelled at shutdown: %s", name)
            await asyncio.gather(*tasks, return_exceptions=True)
