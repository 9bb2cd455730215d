"""What every stream moderator shares: the reader of one API's stream shape (`StreamText`), the
check it is given (`StreamCheck`), and the helpers both hold-back and monitor use at the ends of
a stream. Kept apart from the moderators so that neither imports the other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, Protocol

import orjson

from guard_engine.errors import GuardError
from guard_engine.types import Verdict
from proxy.sse import SSEEvent
from proxy.streaming.chunks import upstream_error_event
from proxy.streaming.outcome import StreamOutcome

StreamCheck = Callable[[str], Awaitable[Verdict]]


class StreamText(Protocol):
    """What the stream moderators need from one API's stream shape (an API adapter's reader).

    `ResponseText` reads chat.completion.chunk events (the answer ends at `[DONE]`); the
    Responses API's reader (`proxy.apis.responses_stream`) reads its typed events (the answer
    ends at its terminal event, `ended`)."""

    total: int  # characters of text read so far
    finished: bool  # the answer's text is complete (a final check may run now)
    ended: bool  # the terminal event was read: nothing after it is read
    error: str | None
    usage: dict[str, Any] | None
    model: str | None

    def read(self, event: SSEEvent, *, strip_reasoning: bool = False) -> tuple[bytes, int, bool]:
        """(bytes to send for the event, text characters it added, checkable)."""
        ...

    def render(self) -> str:
        """All text read so far, as the guard judges it."""
        ...

    def refusal(self, refusal: str, *, after_text: bool, dropped: list[bytes]) -> bytes:
        """The events that end a blocked stream (`dropped`: the held events never sent)."""
        ...


async def timed_check(check: StreamCheck, text: str, outcome: StreamOutcome) -> Verdict:
    """Runs one check, counting it and its wall time; any failure becomes a GuardError."""
    outcome.checks += 1
    start = perf_counter()
    try:
        return await check(text)
    except GuardError:
        raise
    except Exception as exc:  # a bug in the check must still fail closed, not leak text
        raise GuardError(f"guard check failed: {type(exc).__name__}: {exc}") from exc
    finally:
        outcome.guard_ms += (perf_counter() - start) * 1000.0


def usable(event: SSEEvent) -> SSEEvent | None:
    """A trailing event cut off at EOF is kept only if its payload is whole (`[DONE]` or JSON
    that parses); it is then completed with its blank line. Otherwise it is dropped: an SSE
    client discards an unterminated event anyway."""
    if event.complete:
        return event
    if event.data is None:
        return None
    if not event.is_done:
        try:
            orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return None
    return SSEEvent(event.raw + b"\n\n", event.data)


def ended_early(outcome: StreamOutcome, text: StreamText) -> bytes:
    """Records why the stream ended without `[DONE]` and returns the event that tells the
    client. When the upstream already sent an error event (forwarded in order), that one says
    it and nothing is added."""
    if text.error is not None:
        outcome.upstream_error = outcome.upstream_error or f"upstream error event: {text.error}"
        return b""
    if outcome.upstream_error is None:
        outcome.upstream_error = "connection closed before [DONE]"
    return upstream_error_event(outcome.upstream_error)
