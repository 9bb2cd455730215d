"""Reading Responses API stream events for their text, and the events a block ends with.

A Responses stream is typed events (`event: <type>` + JSON `data` with the same `type`):
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, text deltas (`response.output_text.delta`,
`response.refusal.delta`, `response.function_call_arguments.delta`,
`response.reasoning_summary_text.delta`, `response.reasoning_text.delta`, ...), their `.done`
events, `response.output_item.done`, and one terminal event: `response.completed`,
`response.incomplete` or `response.failed`.

`ResponsesStreamText` is the hold-back's reader (`proxy.streaming.holdback.StreamText`) for
them. Deltas add text per output item (`proxy.apis.responses_text.OutputText`). Events that
repeat text in full (`*.done`, `output_item.done`, the terminal event's `response.output`) add
nothing when they repeat what the deltas said, so they wait behind those deltas; when they say
something else (a server that sends only a final event, or a final text that differs), the
difference is new text that a check must cover before the event is released. Any other event
with a string `delta` is text too; data that is not a JSON object, and parts or items no guard
can read (a generated image), are uncheckable.

A blocked stream ends with a new assistant message carrying the refusal (placed after the
items the client has already received) and `response.incomplete` with
`incomplete_details.reason: "content_filter"` and that message as its output.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from proxy.apis.responses_blocks import (
    blocked,
    event,
    message_events,
    refusal_item,
    strip_output_reasoning,
)
from proxy.apis.responses_text import OutputText, apply_item
from proxy.sse import SSEEvent, SSEParser
from proxy.streaming.chunks import parse_chunk

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_START = frozenset({"response.created", "response.in_progress", "response.queued"})
_ADDED = b'"response.output_item.added"'

# Delta event -> (part key, the field naming the part's index within the item).
_DELTAS = {
    "response.output_text.delta": ("content", "content_index"),
    "response.refusal.delta": ("content", "content_index"),
    "response.function_call_arguments.delta": ("args", ""),
    "response.custom_tool_call_input.delta": ("args", ""),
    "response.mcp_call_arguments.delta": ("args", ""),
    "response.reasoning_summary_text.delta": ("summary", "summary_index"),
    "response.reasoning_text.delta": ("content", "content_index"),
    "response.code_interpreter_call_code.delta": ("code", ""),
}
# Done event -> (part key, index field, the field holding the complete value).
_DONES = {
    "response.output_text.done": ("content", "content_index", "text"),
    "response.refusal.done": ("content", "content_index", "refusal"),
    "response.function_call_arguments.done": ("args", "", "arguments"),
    "response.custom_tool_call_input.done": ("args", "", "input"),
    "response.mcp_call_arguments.done": ("args", "", "arguments"),
    "response.reasoning_summary_text.done": ("summary", "summary_index", "text"),
    "response.reasoning_text.done": ("content", "content_index", "text"),
    "response.code_interpreter_call_code.done": ("code", "", "code"),
}
# Events whose `part` is a complete content part.
_PART_EVENTS = {
    "response.content_part.added": ("content", "content_index"),
    "response.content_part.done": ("content", "content_index"),
    "response.reasoning_summary_part.added": ("summary", "summary_index"),
    "response.reasoning_summary_part.done": ("summary", "summary_index"),
}
_UNREADABLE_EVENTS = frozenset({"response.image_generation_call.partial_image"})


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _part_text(part: object) -> tuple[str | None, bool]:
    """(text of a content part or None, readable)."""
    if not isinstance(part, dict):
        return None, False
    for key in ("text", "refusal"):
        if isinstance(part.get(key), str):
            return str(part[key]), True
    return None, part.get("type") in ("output_text", "refusal", "summary_text", "reasoning_text")


class ResponsesStreamText:
    """The text of a streamed Response so far, and what is needed to write a block's events."""

    __slots__ = (
        "_reasoning",
        "_seq",
        "added",
        "ended",
        "error",
        "finished",
        "model",
        "response",
        "text",
        "total",
        "usage",
    )

    def __init__(self) -> None:
        self.text = OutputText()
        self.total = 0
        self.finished = False
        self.ended = False
        self.error: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.response: dict[str, Any] = {}  # the latest Response object seen (created, ...)
        self.added = 0  # output items announced to the client (after any stripped)
        self._seq = -1  # the highest sequence_number seen
        self._reasoning: list[int] = []  # output indices of stripped reasoning items

    def render(self) -> str:
        return self.text.render()

    def read(self, event: SSEEvent, *, strip_reasoning: bool = False) -> tuple[bytes, int, bool]:
        assert event.data is not None
        data = parse_chunk(event.data)
        if data is None:
            return event.raw, 0, False
        seq = data.get("sequence_number")
        if isinstance(seq, int) and seq > self._seq:
            self._seq = seq
        raw = event.raw
        if strip_reasoning:
            kept = self._strip(data)
            if kept is None:
                return b"", 0, True  # reasoning: never sent, never checked
            if kept:
                raw = event_like(event.raw, data)
        added, readable = self._read(data)
        self.total += added
        return raw, added, readable

    def _read(self, data: dict[str, Any]) -> tuple[int, bool]:
        kind = data.get("type")
        if not isinstance(kind, str):
            error = data.get("error")  # an error envelope (the gateway's upstream relay sends one)
            if error is not None:
                message = error.get("message") if isinstance(error, dict) else error
                self.error = str(message or "error event")
            return 0, True
        index = _int(data.get("output_index"))
        if kind in _START or kind in _TERMINAL:
            response = data.get("response")
            if isinstance(response, dict):
                self.response = response
                if isinstance(response.get("model"), str):
                    self.model = response["model"]
                if isinstance(response.get("usage"), dict):
                    self.usage = response["usage"]
            if kind not in _TERMINAL:
                return 0, True
            self.ended = self.finished = True
            if kind == "response.failed" and isinstance(response, dict):
                error = response.get("error")
                message = error.get("message") if isinstance(error, dict) else None
                self.error = str(message or "response.failed")
            output = response.get("output") if isinstance(response, dict) else None
            added, readable = 0, True
            if isinstance(output, list):
                for i, item in enumerate(output):
                    if isinstance(item, dict):
                        n, ok = apply_item(self.text.item(i), item)
                        added, readable = added + n, readable and ok
            return added, readable
        if kind == "error":
            message = data.get("message")
            self.error = str(message or data.get("code") or "error event")
            return 0, True
        if kind in ("response.output_item.added", "response.output_item.done"):
            if kind == "response.output_item.added":
                self.added += 1
            item = data.get("item")
            if not isinstance(item, dict):
                return 0, False
            return apply_item(self.text.item(index), item)
        delta = _DELTAS.get(kind)
        if delta is not None:
            value = data.get("delta")
            key = (delta[0], _int(data.get(delta[1])) if delta[1] else 0)
            return (self.text.item(index).add(key, value) if isinstance(value, str) else 0), True
        done = _DONES.get(kind)
        if done is not None:
            value = data.get(done[2])
            key = (done[0], _int(data.get(done[1])) if done[1] else 0)
            return (self.text.item(index).set(key, value) if isinstance(value, str) else 0), True
        part_event = _PART_EVENTS.get(kind)
        if part_event is not None:
            text, readable = _part_text(data.get("part"))
            if text is None:
                return 0, readable
            key = (part_event[0], _int(data.get(part_event[1])))
            state = self.text.item(index)
            if kind.endswith(".added"):
                return (state.add(key, text) if key not in state.parts else 0), readable
            return state.set(key, text), readable
        if kind in _UNREADABLE_EVENTS:
            return 0, False
        value = data.get("delta")
        if isinstance(value, str) and value:  # a text delta of a kind this gateway does not know
            return self.text.item(index).add((kind, _int(data.get("content_index"))), value), True
        return 0, True

    def _strip(self, data: dict[str, Any]) -> bool | None:
        """Reasoning removed (`output.reasoning: strip`): None drops the event, True means it
        was changed (output indices renumbered, reasoning items left out)."""
        kind = data.get("type")
        if not isinstance(kind, str):
            return False
        if kind.startswith("response.reasoning"):
            return None
        changed = False
        if "output_index" in data:
            index = _int(data.get("output_index"))
            item = data.get("item")
            if (
                kind == "response.output_item.added"
                and isinstance(item, dict)
                and item.get("type") == "reasoning"
            ):
                self._reasoning.append(index)
                return None
            if index in self._reasoning:
                return None
            shift = sum(1 for i in self._reasoning if i < index)
            if shift:
                data["output_index"] = index - shift
                changed = True
        response = data.get("response")
        if isinstance(response, dict):
            changed = strip_output_reasoning(response) or changed
        return changed

    def refusal(self, refusal: str, *, after_text: bool, dropped: list[bytes]) -> bytes:
        """A refusal message after what the client has, then `response.incomplete`."""
        seq = self._seq + 1
        shown = self.added - sum(1 for raw in dropped if _ADDED in raw)
        rid = str(self.response.get("id") or "response")
        final = blocked({**self.response}, refusal, rid)
        final.pop("output_text", None)
        final["usage"] = None
        out: list[bytes] = []
        if refusal:
            item = refusal_item(rid, refusal)
            events, seq = message_events(item, shown, seq)
            out.extend(event(e) for e in events)
        end = {"type": "response.incomplete", "sequence_number": seq, "response": final}
        out.append(event(end))
        return b"".join(out)


def event_like(raw: bytes, data: dict[str, Any]) -> bytes:
    """`data` re-encoded, keeping the event's `event:` line when it had one."""
    payload = orjson.dumps(data)
    if raw.startswith(b"event:"):
        return event(data)
    return b"data: " + payload + b"\n\n"


async def strip_reasoning_events(upstream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """`output.reasoning: strip` for a stream no output check reads."""
    parser = SSEParser()
    text = ResponsesStreamText()
    try:
        async for chunk in upstream:
            out = []
            for e in parser.feed(chunk):
                out.append(e.raw if e.data is None else text.read(e, strip_reasoning=True)[0])
            if out:
                yield b"".join(out)
        tail = b"".join(e.raw for e in parser.flush())
        if tail:
            yield tail
    finally:
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()
