"""CancelOnDisconnect / until_disconnect with scripted ASGI receive channels."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from proxy.disconnect import CancelOnDisconnect, ClientDisconnected, until_disconnect


class Channel:
    """An ASGI receive callable whose next message the test releases."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    async def __call__(self) -> Message:
        return await self.queue.get()

    def disconnect(self) -> None:
        self.queue.put_nowait({"type": "http.disconnect"})


async def test_work_that_finishes_first_returns_its_result() -> None:
    channel = Channel()

    async def work() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await until_disconnect(work(), channel) == "done"
    channel.disconnect()  # too late to matter
    await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # the task is not cancelled afterwards


async def test_disconnect_cancels_the_work_and_raises() -> None:
    channel = Channel()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    loop = asyncio.get_running_loop()
    loop.call_later(0.01, channel.disconnect)
    with pytest.raises(ClientDisconnected):
        await until_disconnect(work(), channel)
    assert cancelled.is_set()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0
    await asyncio.sleep(0)  # and the task can go on awaiting


async def test_body_messages_before_the_disconnect_are_ignored() -> None:
    channel = Channel()
    channel.queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    finished = False
    async with CancelOnDisconnect(channel):
        await asyncio.sleep(0.01)
        finished = True
    assert finished


async def test_outside_cancellation_is_not_swallowed() -> None:
    channel = Channel()

    async def guarded() -> None:
        async with CancelOnDisconnect(channel):
            await asyncio.Event().wait()

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
