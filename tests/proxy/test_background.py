"""The registry of background tasks: drained, then cancelled, and nothing started after that."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.background import BackgroundTasks


async def test_drain_waits_for_tasks_started_while_draining() -> None:
    tasks = BackgroundTasks()
    done: list[str] = []
    release = asyncio.Event()

    async def second() -> None:
        done.append("second")

    async def first() -> None:
        await release.wait()
        tasks.spawn(second(), name="second")  # as a settling stream starts a THINK re-check
        done.append("first")

    tasks.spawn(first(), name="first")
    release.set()
    await tasks.aclose(timeout_s=30)
    assert done == ["first", "second"]
    assert tasks.pending == 0 and tasks.cancelled == []


async def test_what_outlasts_the_deadline_is_cancelled_and_waited_for() -> None:
    tasks = BackgroundTasks()
    ended: list[str] = []
    never = asyncio.Event()

    async def slow() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            # On its way out it records the cancellation and tries to start more work.
            ended.append("recorded")
            tasks.spawn(asyncio.sleep(0), name="late")
            raise

    tasks.spawn(slow(), name="slow")
    await asyncio.sleep(0)  # let it start waiting
    await tasks.aclose(timeout_s=0)
    assert ended == ["recorded"]
    assert tasks.cancelled == ["slow"]
    assert tasks.pending == 0 and tasks.closing


async def test_after_shutdown_nothing_starts(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks()
    await tasks.aclose(timeout_s=0)
    work = asyncio.sleep(0)
    assert tasks.spawn(work, name="late") is None
    assert work.cr_frame is None  # closed, never run (and never reported as un-awaited)
    assert "shutting down: late" in caplog.text

    started = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    tasks.track(started)  # registered too late: cancelled at once
    await asyncio.gather(started, return_exceptions=True)
    assert started.cancelled()


async def test_a_failed_task_is_logged_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks()

    async def fails() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="guardline.background"):
        tasks.spawn(fails(), name="guardline-shadow-x")
        assert await tasks.drain(timeout_s=30)
    assert "background task guardline-shadow-x failed" in caplog.text
