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
import enum
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from guard_engine.errors import GuardError
from guard_engine.policy.compiled import StreamMode, Uncheckable
from guard_engine.types import Verdict
from proxy.sse import SSEEvent, SSEParser
from proxy.streaming.chunks import ResponseText, guard_error_event
from proxy.streaming.monitor import monitor_stream
from proxy.streaming.outcome import StreamOutcome
from proxy.streaming.reader import UpstreamReader, describe_error
from proxy.streaming.stream_text import StreamCheck, StreamText, ended_early, timed_check, usable

__all__ = ["StreamCheck", "StreamMode", "StreamOutcome", "StreamText", "moderate_stream"]

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
    rules = _Rules(
        window=window,
        first_window=first,
        refusal=refusal,
        strip_reasoning=strip_reasoning,
        refuse_uncheckable=on_uncheckable == "refuse",
    )
    return HoldBack(upstream, check, outcome, rules, new_text()).run()


@dataclass(frozen=True, slots=True)
class _Rules:
    """What the policy says: check cadence, the refusal, reasoning and unparseable events."""

    window: int  # characters of new text that make a check due
    first_window: int  # ... for the first check
    refusal: str
    strip_reasoning: bool
    refuse_uncheckable: bool


class Phase(enum.Enum):
    """Where a held-back stream is. Upstream "ended" means nothing more will be read from it:
    EOF, a failed read, `[DONE]`, or the API's terminal event."""

    READING = "reading"  # upstream open, no check running
    CHECKING = "checking"  # a check runs; upstream is still read meanwhile
    ENDED = "ended"  # upstream ended, no check running (a last one may be due)
    LAST_CHECK = "last check"  # upstream ended, a check runs
    BLOCKED = "blocked"  # flagged text or refused uncheckable content: the refusal went out
    FAILED = "failed"  # the guard failed: the error event went out
    DONE = "done"  # every held event was released (and the client told if upstream was cut)


# The loop tests the phase a few times per upstream chunk; on Python 3.11 reading a member off
# its Enum class costs ~0.15 µs each time, so the methods use these module-level names.
_READING, _CHECKING, _ENDED, _LAST_CHECK = (
    Phase.READING,
    Phase.CHECKING,
    Phase.ENDED,
    Phase.LAST_CHECK,
)
_BLOCKED, _FAILED, _DONE = Phase.BLOCKED, Phase.FAILED, Phase.DONE


class HoldBack:
    """Holds each upstream event that carries text until a passed check covers it.

    Text events are numbered in arrival order (`_seq`; events without text get 0): a check
    started after event n covers events 1..n, and once it passes they, and the text-free
    events behind them, are released in order. `run()` is the driver; the methods below it
    are what happens on each event: text arrived, a check is due, a check settled, upstream
    ended.
    """

    def __init__(
        self,
        upstream: AsyncIterator[bytes],
        check: StreamCheck,
        outcome: StreamOutcome,
        rules: _Rules,
        text: StreamText,
    ) -> None:
        self.phase = _READING
        self._reader = UpstreamReader(upstream)
        self._parser = SSEParser()
        self._check = check
        self._outcome = outcome
        self._rules = rules
        self._text = text
        # Held events, oldest first: (seq, chars, raw bytes).
        self._held: deque[tuple[int, int, bytes]] = deque()
        self._seq = 0  # seq of the last text event read
        self._checked = 0  # highest seq covered by a passed check
        self._launched = 0  # text.total when the last check started
        self._running: asyncio.Task[Verdict] | None = None
        self._running_seq = 0  # seq the running check covers up to
        self._keepalive: list[bytes] = []

    async def run(self) -> AsyncGenerator[bytes, None]:
        """The bytes for the client, in order; closes the upstream before it returns."""
        try:
            while True:
                if self.phase is _READING or self.phase is _ENDED:
                    self._start_check_if_due()
                phase = self.phase
                if phase is _ENDED:
                    async for out in self._finish():
                        yield out
                    return
                if (
                    phase is _CHECKING or phase is _LAST_CHECK
                ) and await self._check_settled_first():
                    out = await self._window_checked()
                else:
                    try:  # the next upstream chunk (possibly the one read while a check ran)
                        chunk = await self._reader.read()
                    except Exception as exc:  # the upstream connection failed mid-stream
                        self._outcome.upstream_error = describe_error(exc)
                        chunk = None
                    held_or_refused = self._text_arrived(chunk)
                    out = await self._block() if held_or_refused is None else held_or_refused
                if out:
                    yield out
                if self.phase is _BLOCKED or self.phase is _FAILED:
                    return
        finally:
            self._outcome.usage = self._text.usage
            self._outcome.model = self._text.model
            if self._running is not None:
                self._running.cancel()
                await asyncio.gather(self._running, return_exceptions=True)
            await self._reader.aclose()

    # -- a check is due ------------------------------------------------------------------

    def _start_check_if_due(self) -> None:
        """Starts a check of all text so far once a window of new text has arrived, or the
        answer's text is complete, or upstream ended with unchecked text."""
        text = self._text
        pending = text.total - self._launched
        size = self._rules.first_window if self._launched == 0 else self._rules.window
        ended = self.phase is _ENDED
        if pending > 0 and (pending >= size or ended or text.finished):
            self._running = asyncio.ensure_future(
                timed_check(self._check, text.render(), self._outcome)
            )
            self._running_seq, self._launched = self._seq, text.total
            self.phase = _LAST_CHECK if ended else _CHECKING

    async def _check_settled_first(self) -> bool:
        """While upstream is open, waits for the check or the next upstream chunk, whichever
        comes first (the chunk stays pending in the reader); True when the check is done.
        Once upstream ended there is nothing else to wait for."""
        assert self._running is not None
        if self.phase is _CHECKING and not self._running.done():
            await asyncio.wait(
                (self._reader.pending(), self._running), return_when=asyncio.FIRST_COMPLETED
            )
        return self.phase is _LAST_CHECK or self._running.done()

    # -- a check settled -----------------------------------------------------------------

    async def _window_checked(self) -> bytes:
        """The running check's verdict: release what it covered, or end the stream."""
        running, self._running = self._running, None
        assert running is not None
        try:
            verdict = await running
        except GuardError as exc:
            self._outcome.error = exc
            await self._reader.aclose()
            self.phase = _FAILED
            return guard_error_event(exc.reason)
        self._outcome.verdicts.append(verdict)
        if verdict.flagged:
            return await self._block()
        self._checked = self._running_seq
        self.phase = _ENDED if self.phase is _LAST_CHECK else _READING
        return self._release()

    # -- text arrived --------------------------------------------------------------------

    def _text_arrived(self, chunk: bytes | None) -> bytes | None:
        """Holds the chunk's events; returns what may go out at once (text-free events not
        behind held text, keep-alives), or None when uncheckable content must end the stream
        (the caller blocks it). Runs once per upstream chunk: the hot path, hence the locals."""
        held, text, outcome, rules = self._held, self._text, self._outcome, self._rules
        if chunk is None:
            self._upstream_ended()
            events = [e for e in map(usable, self._parser.flush()) if e is not None]
        else:
            events = self._parser.feed(chunk)
        for event in events:
            if event.is_done:
                outcome.completed = True
                self._upstream_ended()
                held.append((0, 0, event.raw))
                break  # nothing after [DONE] is read
            if event.data is None:
                self._hold_comment(event)
                continue
            raw, chars, checkable = text.read(event, strip_reasoning=rules.strip_reasoning)
            if not checkable:  # nobody can check (all of) what it carries
                outcome.uncheckable += 1
                if rules.refuse_uncheckable:
                    outcome.refused_uncheckable = True
                    return None
            if chars > 0:
                self._seq += 1
                held.append((self._seq, chars, raw))
            else:
                held.append((0, 0, raw))
            if text.ended:  # a terminal event that is not `[DONE]` (Responses API)
                outcome.completed = True
                self._upstream_ended()
                break
        out = self._release() if held and held[0][0] == 0 else b""
        if self._keepalive:
            out += b"".join(self._keepalive)
            self._keepalive.clear()
        return out

    def _hold_comment(self, event: SSEEvent) -> None:
        if self._seq > self._checked and event.raw[:1] == b":":
            # A keep-alive comment behind held text carries nothing and has no order to keep:
            # send it now, so a client (or a proxy in between) waiting on a guard check or a
            # buffered answer sees the connection alive.
            self._keepalive.append(event.raw)
        else:
            self._held.append((0, 0, event.raw))

    # -- upstream ended ------------------------------------------------------------------

    def _upstream_ended(self) -> None:
        if self.phase is _READING:
            self.phase = _ENDED
        elif self.phase is _CHECKING:
            self.phase = _LAST_CHECK

    async def _finish(self) -> AsyncGenerator[bytes, None]:
        """Upstream ended and every text was checked: the rest goes out, and a client whose
        upstream was cut short is told so."""
        out = self._release()
        self.phase = _DONE
        if self._outcome.completed:
            if out:
                yield out
            await self._reader.drain()
        else:
            await self._reader.aclose()
            yield out + ended_early(self._outcome, self._text)

    # -- releasing and blocking ----------------------------------------------------------

    def _release(self) -> bytes:
        """The held events a passed check covers, up to the first one it does not."""
        parts: list[bytes] = []
        held = self._held
        while held and held[0][0] <= self._checked:
            _, chars, raw = held.popleft()
            parts.append(raw)
            self._outcome.released_chars += chars
        return b"".join(parts)

    async def _block(self) -> bytes:
        """Ends the stream as a block: held events are dropped unsent, upstream is closed."""
        self._outcome.blocked = True
        dropped = [raw for _, _, raw in self._held]
        self._held.clear()
        await self._reader.aclose()
        self.phase = _BLOCKED
        return self._text.refusal(
            self._rules.refusal, after_text=self._outcome.released_chars > 0, dropped=dropped
        )
