"""`output.stream: monitor`: stream at once, check in the background, never block.

Every complete upstream event is released the moment it is parsed (the exact bytes). Checks run
with the hold-back cadence (every `holdback_chars` of new text, then the whole answer once at
the end), one at a time, in one background worker task, so a slow guard never delays the client.
Reasoning is stripped from events when the policy says `output.reasoning: strip`; an event the
gateway cannot parse is released like the rest (monitor never blocks) and counted in
`outcome.uncheckable`, so the record shows output nobody checked.

When the stream ends, the worker is left to finish the final check on its own and is exposed
as `outcome.background`: the caller awaits `outcome.settled()` (e.g. in a Starlette
BackgroundTask, which runs after the last byte has been sent) before writing the audit record.
Awaiting it inside the stream would delay the end of the HTTP response, and SDKs read to the
end of the body. Guard failures are recorded in `outcome.error`; checking continues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from guard_engine.errors import GuardError
from proxy.sse import SSEParser
from proxy.streaming.chunks import ResponseText
from proxy.streaming.outcome import StreamOutcome
from proxy.streaming.reader import UpstreamReader, describe_error
from proxy.streaming.stream_text import StreamCheck, StreamText, ended_early, timed_check, usable


class _BackgroundChecks:
    """One worker task running the checks in order; woken when a window of text is due."""

    __slots__ = ("_check", "_final", "_launched", "_outcome", "_task", "_text", "_wake", "_window")

    def __init__(
        self, check: StreamCheck, outcome: StreamOutcome, text: StreamText, window: int
    ) -> None:
        self._check = check
        self._outcome = outcome
        self._text = text
        self._window = window
        self._launched = 0  # text.total when the last check started
        self._final = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Called after new text: wakes the worker if a window is due (cheap when it is not)."""
        if self._text.total - self._launched >= self._window:
            if self._task is None:
                self._task = asyncio.ensure_future(self._run())
            self._wake.set()

    def finish(self) -> asyncio.Task[None] | None:
        """The stream ended: check what is left, then stop. Returns the task to await."""
        self._final = True
        if self._task is None and self._text.total > self._launched:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()
        return self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                pending = self._text.total - self._launched
                if not (pending >= self._window or (self._final and pending > 0)):
                    break
                self._launched = self._text.total
                try:
                    verdict = await timed_check(self._check, self._text.render(), self._outcome)
                except GuardError as exc:
                    self._outcome.error = exc
                    continue
                self._outcome.verdicts.append(verdict)
            if self._final:
                return


async def monitor_stream(
    upstream: AsyncIterator[bytes],
    *,
    holdback_chars: int,
    check: StreamCheck,
    outcome: StreamOutcome,
    strip_reasoning: bool = False,
    new_text: Callable[[], StreamText] = ResponseText,
) -> AsyncGenerator[bytes, None]:
    parser = SSEParser()
    text = new_text()
    reader = UpstreamReader(upstream)
    checks = _BackgroundChecks(check, outcome, text, max(1, holdback_chars))
    try:
        while not outcome.completed:
            try:
                chunk = await reader.read()
            except Exception as exc:  # the upstream connection failed mid-stream
                outcome.upstream_error = describe_error(exc)
                chunk = None
            if chunk is None:
                events = [e for e in map(usable, parser.flush()) if e is not None]
            else:
                events = parser.feed(chunk)
            parts: list[bytes] = []
            for event in events:
                if event.data is None or event.is_done:
                    parts.append(event.raw)
                    if event.is_done:
                        outcome.completed = True
                        break
                    continue
                raw, chars, checkable = text.read(event, strip_reasoning=strip_reasoning)
                parts.append(raw)
                if not checkable:  # released unchecked (monitor never holds); recorded
                    outcome.uncheckable += 1
                outcome.released_chars += chars
                if text.ended:  # a terminal event that is not `[DONE]` (Responses API)
                    outcome.completed = True
                    break
            checks.poke()
            if chunk is None:
                await reader.aclose()
                parts.append(ended_early(outcome, text))
                yield b"".join(parts)
                return
            if parts:
                yield b"".join(parts)
        await reader.drain()
    finally:
        outcome.usage = text.usage
        outcome.model = text.model
        # Whatever ended the stream (including a client disconnect), what was sent is checked.
        outcome.background = checks.finish()
        await reader.aclose()
