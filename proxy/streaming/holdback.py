"""Streaming output moderation: no streamed character reaches the client before a guard check
covering it has passed.

`moderate_stream` transforms the upstream's SSE bytes into the bytes sent to the client:

- `holdback` holds each event that carries text until a check whose text included it passes.
  A check runs whenever `holdback_chars` of new text have arrived, and once more for whatever
  is left when the answer ends (every choice's finish_reason, `[DONE]`, or EOF). At most one
  check is in flight, and upstream keeps being read while it runs; a check covers exactly the
  events received before it was started. Events without text (the role chunk, empty deltas,
  the usage chunk) keep their place in the order: they are released as soon as no held text
  precedes them. Keep-alive comments go out at once, even past held text: they carry nothing,
  and they show the client (and proxies in between) that the connection is alive while a check
  runs or an answer is buffered. Released events are the upstream's exact bytes.
- `buffer` is hold-back with a single check of the whole answer at the end.
- `monitor` is in `monitor.py`: everything is released at once and checked in the background.

n > 1: one check covers all choices (rendered as `ResponseText.render` does, choices separated by
a blank line), so the guard is called as often as for n = 1 and a flag in any choice ends the
whole stream, which is one HTTP response.

Reasoning (`reasoning_content`, `reasoning`, `reasoning_details` deltas) is text like content
and held back the same way. With `strip_reasoning` (policy `output.reasoning: strip`) it is
removed from each event instead (the event is re-encoded without it) and never checked or sent.

An event the gateway cannot parse (its data is neither `[DONE]` nor a JSON object) may still
carry text a lenient client would show, and no guard can read it, so it is uncheckable content
under the policy's `on_uncheckable` rule (as unsupported input parts are); so is an event whose
`delta.content` has parts that are not text (an image, audio, an unknown type):
- `refuse` (default): the stream ends as a block at once: nothing more is released (held text
  is dropped unreleased), one `content_filter` chunk with the refusal, `[DONE]`, the upstream
  closed. A content_filter end rather than an error event, because the policy stopped the
  answer on purpose and SDKs surface that without raising.
- `flag`: the event is released unchanged in order (only after every text before it, and any
  text it carries itself, has been checked) and counted in `outcome.uncheckable`; the output
  decision becomes `degraded`.

Ends: a flagged verdict releases nothing more and sends one `content_filter` chunk then
`[DONE]`; a guard failure (the pipeline has already applied `on_guard_error`, so an exception
here means fail-closed) sends one `guard_unavailable` error event; an upstream that ends (or
fails) without `[DONE]` gets its text checked and released as usual, then an `upstream_error`
event, so the client never takes a truncated answer for a complete one. In every case the
upstream generator is closed (`aclose`) before `moderate_stream` returns.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

import orjson

from guard_engine.errors import GuardError
from guard_engine.policy.compiled import StreamMode, Uncheckable
from guard_engine.types import Verdict
from proxy.sse import SSEEvent, SSEParser
from proxy.streaming.chunks import (
    ResponseText,
    guard_error_event,
    upstream_error_event,
)
from proxy.streaming.outcome import StreamOutcome
from proxy.streaming.reader import UpstreamReader, describe_error

__all__ = ["StreamCheck", "StreamMode", "StreamOutcome", "StreamText", "moderate_stream"]

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


_NEVER = sys.maxsize  # buffer mode: no window is ever large enough; only the final check runs


def moderate_stream(
    upstream: AsyncIterator[bytes],
    *,
    mode: StreamMode,
    holdback_chars: int,
    check: StreamCheck,
    refusal: str,
    outcome: StreamOutcome,
    first_window_chars: int | None = None,
    strip_reasoning: bool = False,
    on_uncheckable: Uncheckable = "refuse",
    new_text: Callable[[], StreamText] = ResponseText,
) -> AsyncGenerator[bytes, None]:
    """The bytes to send to the client for one streamed chat completion (see module doc).

    `first_window_chars` (hold-back only) makes the first check run as soon as that much text
    has arrived: the first token then waits for one guard call, not for a whole window.
    `strip_reasoning` removes reasoning from every event; `on_uncheckable` says what happens
    to an event the gateway cannot parse (monitor mode always releases and records it).
    `new_text` makes the reader of the API's stream shape (default: chat completions).

    A plain function returning the async generator, so a bad `mode` fails at the call.
    """
    if mode == "monitor":
        from proxy.streaming.monitor import monitor_stream

        return monitor_stream(
            upstream,
            holdback_chars=holdback_chars,
            check=check,
            outcome=outcome,
            strip_reasoning=strip_reasoning,
            new_text=new_text,
        )
    if mode == "holdback":
        window = max(1, holdback_chars)
        first = max(1, min(first_window_chars or window, window))
    elif mode == "buffer":
        window = first = _NEVER
    else:
        raise ValueError(f"unknown output stream mode: {mode!r}")
    rules = _Rules(strip_reasoning=strip_reasoning, refuse_uncheckable=on_uncheckable == "refuse")
    return _gated(upstream, window, check, refusal, outcome, first, rules, new_text())


@dataclass(frozen=True, slots=True)
class _Rules:
    """What the policy says about reasoning and unparseable events."""

    strip_reasoning: bool
    refuse_uncheckable: bool


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


async def _gated(
    upstream: AsyncIterator[bytes],
    window: int,
    check: StreamCheck,
    refusal: str,
    outcome: StreamOutcome,
    first_window: int,
    rules: _Rules,
    text: StreamText,
) -> AsyncGenerator[bytes, None]:
    parser = SSEParser()
    reader = UpstreamReader(upstream)
    # Held events, oldest first: (seq, chars, raw). seq numbers the events that carry text
    # (0 for events without); an event is covered once a passed check started at seq >= its own.
    held: deque[tuple[int, int, bytes]] = deque()
    seq = 0
    checked = 0  # highest seq covered by a passed check
    launched = 0  # text.total when the last check started
    inflight: asyncio.Task[Verdict] | None = None
    inflight_seq = 0
    ended = False  # nothing more will be read from upstream
    keepalive: list[bytes] = []

    def release() -> bytes:
        parts: list[bytes] = []
        while held and held[0][0] <= checked:
            _, chars, raw = held.popleft()
            parts.append(raw)
            outcome.released_chars += chars
        return b"".join(parts)

    try:
        while True:
            if inflight is None:
                pending = text.total - launched
                size = first_window if launched == 0 else window
                if pending > 0 and (pending >= size or ended or text.finished):
                    inflight = asyncio.ensure_future(timed_check(check, text.render(), outcome))
                    inflight_seq, launched = seq, text.total
                elif ended:
                    break
            if inflight is not None:
                if not ended and not inflight.done():
                    # Keep reading upstream while the guard works.
                    await asyncio.wait(
                        (reader.pending(), inflight), return_when=asyncio.FIRST_COMPLETED
                    )
                if ended or inflight.done():
                    try:
                        verdict = await inflight
                    except GuardError as exc:
                        outcome.error = exc
                        await reader.aclose()
                        yield guard_error_event(exc.reason)
                        return
                    finally:
                        inflight = None
                    outcome.verdicts.append(verdict)
                    if verdict.flagged:
                        outcome.blocked = True
                        dropped = [raw for _, _, raw in held]
                        held.clear()
                        await reader.aclose()
                        yield text.refusal(
                            refusal, after_text=outcome.released_chars > 0, dropped=dropped
                        )
                        return
                    checked = inflight_seq
                    out = release()
                    if out:
                        yield out
                    continue
            # Read the next chunk (possibly the one already read while the check ran).
            try:
                chunk = await reader.read()
            except Exception as exc:  # the upstream connection failed mid-stream
                outcome.upstream_error = describe_error(exc)
                chunk = None
            if chunk is None:
                ended = True
                events = [e for e in map(usable, parser.flush()) if e is not None]
            else:
                events = parser.feed(chunk)
            for event in events:
                if event.is_done:
                    outcome.completed = ended = True
                    held.append((0, 0, event.raw))
                    break  # nothing after [DONE] is read
                if event.data is None:
                    if seq > checked and event.raw[:1] == b":":
                        # A keep-alive comment behind held text carries nothing and has no
                        # order to keep: send it now, so a client (or a proxy in between)
                        # waiting on a guard check or a buffered answer sees the connection alive.
                        keepalive.append(event.raw)
                    else:
                        held.append((0, 0, event.raw))
                    continue
                raw, chars, checkable = text.read(event, strip_reasoning=rules.strip_reasoning)
                if not checkable:  # nobody can check (all of) what it carries
                    outcome.uncheckable += 1
                    if rules.refuse_uncheckable:
                        outcome.blocked = outcome.refused_uncheckable = True
                        dropped = [raw for _, _, raw in held]
                        held.clear()
                        await reader.aclose()
                        yield text.refusal(
                            refusal, after_text=outcome.released_chars > 0, dropped=dropped
                        )
                        return
                if chars > 0:
                    seq += 1
                    held.append((seq, chars, raw))
                else:
                    held.append((0, 0, raw))
                if text.ended:  # a terminal event that is not `[DONE]` (Responses API)
                    outcome.completed = ended = True
                    break
            out = release() if held and held[0][0] == 0 else b""
            if keepalive:
                out += b"".join(keepalive)
                keepalive.clear()
            if out:
                yield out
        out = release()
        if outcome.completed:
            if out:
                yield out
            await reader.drain()
        else:
            await reader.aclose()
            yield out + ended_early(outcome, text)
    finally:
        outcome.usage = text.usage
        outcome.model = text.model
        if inflight is not None:
            inflight.cancel()
            await asyncio.gather(inflight, return_exceptions=True)
        await reader.aclose()
