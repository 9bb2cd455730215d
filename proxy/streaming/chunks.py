"""Reading `chat.completion.chunk` events for their text, and the few chunks the gateway writes.

`ResponseText` accumulates what a streamed answer has said so far, per choice, and renders it the
way the non-streaming output check does (`proxy.moderation.extract.extract_output`): per choice
the content, then each tool call as `name(arguments)`, parts and choices separated by a blank
line. Everything a client can display counts as text: `content` (a string or an array of
parts), `refusal`, reasoning under any of its names (`reasoning_content`, `reasoning`,
`reasoning_details`, see `proxy.moderation.message_text`), an audio answer's transcript,
tool-call names and arguments, and the legacy `function_call`.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import GatewayError, GuardUnavailableError, UpstreamError
from proxy.moderation.message_text import (
    audio_transcript,
    content_text,
    message_reasoning,
    strip_choices,
    unreadable_content,
)
from proxy.sse import DONE, SSEEvent, encode_data


def parse_chunk(data: bytes) -> dict[str, Any] | None:
    """One event's JSON payload as an object, or None when it is not one (malformed)."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


class _Choice:
    __slots__ = ("audio", "content", "finished", "function", "reasoning", "refusal", "tools")

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.audio: list[str] = []  # transcript of an audio answer
        self.tools: dict[int, list[list[str]]] = {}  # tool index -> [name parts, argument parts]
        self.function: list[list[str]] | None = None  # legacy function_call
        self.finished = False

    def render(self) -> list[str]:
        texts = (self.reasoning, self.content, self.refusal, self.audio)
        parts = ["".join(p) for p in texts if p]
        calls = [_call(self.tools[i]) for i in sorted(self.tools)]
        if calls:
            parts.append("\n".join(calls))
        if self.function is not None:
            parts.append(_call(self.function))
        return parts


def _call(parts: list[list[str]]) -> str:
    return f"{''.join(parts[0])}({''.join(parts[1])})"


def _add(target: list[str], value: object) -> int:
    if isinstance(value, str) and value:
        target.append(value)
        return len(value)
    return 0


def _add_call(call: list[list[str]], spec: object) -> int:
    if not isinstance(spec, dict):
        return 0
    return _add(call[0], spec.get("name")) + _add(call[1], spec.get("arguments"))


class ResponseText:
    """The text of a streamed chat completion so far, plus the ids needed to write chunks."""

    __slots__ = (
        "_choices",
        "created",
        "ended",
        "error",
        "finished",
        "id",
        "model",
        "total",
        "unreadable",
        "usage",
    )

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self.total = 0  # characters of text seen, all choices
        self.id: Any = None
        self.created: Any = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None  # an upstream error envelope seen mid-stream: its message
        # Every choice seen so far has sent its finish_reason: the answer's text is complete.
        self.finished = False
        self.unreadable = False  # the last chunk read had content parts that are not text
        self.ended = False  # chat streams end at `[DONE]`, which the moderators see themselves

    def add(self, data: bytes) -> int:
        """Reads one event's JSON payload; returns the text characters it added, -1 if malformed."""
        chunk = parse_chunk(data)
        return -1 if chunk is None else self.add_chunk(chunk)

    def add_chunk(self, chunk: dict[str, Any]) -> int:
        """Reads one parsed chunk; returns the text characters it added."""
        if self.id is None:
            self.id = chunk.get("id")
            self.created = chunk.get("created")
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            self.error = str(message or "error event")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return 0
        added = 0
        for item in choices:
            if isinstance(item, dict):
                added += self._add_choice(item)
        self.total += added
        return added

    def _choice(self, item: dict[str, Any]) -> _Choice:
        """The choice a stream item belongs to, with its finish_reason recorded (shared by
        every chunk shape that numbers its choices)."""
        index = item.get("index", 0)
        if not isinstance(index, int):
            index = 0
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
            self.finished = False
        if item.get("finish_reason") and not choice.finished:
            choice.finished = True
            self.finished = all(c.finished for c in self._choices.values())
        return choice

    def _add_choice(self, item: dict[str, Any]) -> int:
        choice = self._choice(item)
        delta = item.get("delta")
        if not isinstance(delta, dict):
            return 0
        content = delta.get("content")
        if unreadable_content(content):
            self.unreadable = True
        added = _add(choice.content, content_text(content))
        added += _add(choice.reasoning, message_reasoning(delta))
        added += _add(choice.audio, audio_transcript(delta))
        if "refusal" in delta:
            added += _add(choice.refusal, delta["refusal"])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if not isinstance(call, dict):
                    continue
                slot = call.get("index", 0)
                key = slot if isinstance(slot, int) else 0
                parts = choice.tools.get(key)
                if parts is None:
                    parts = choice.tools[key] = [[], []]
                added += _add_call(parts, call.get("function"))
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            if choice.function is None:
                choice.function = [[], []]
            added += _add_call(choice.function, legacy)
        return added

    def read(self, event: SSEEvent, *, strip_reasoning: bool = False) -> tuple[bytes, int, bool]:
        """One data event: (the bytes to send for it, text characters it added, checkable).

        Not checkable: data that is not a JSON object (nothing of it is read), or content
        parts that are not text (their text parts are read, the rest cannot be). With
        `strip_reasoning` the reasoning fields are removed from its deltas first (and the event
        re-encoded): stripped text is neither sent nor counted."""
        assert event.data is not None
        chunk = parse_chunk(event.data)
        if chunk is None:
            return event.raw, 0, False
        raw = event.raw
        if strip_reasoning and strip_choices(chunk, "delta"):
            raw = encode_data(orjson.dumps(chunk))
        self.unreadable = False
        added = self.add_chunk(chunk)
        return raw, added, not self.unreadable

    def refusal(self, refusal: str, *, after_text: bool, dropped: list[bytes]) -> bytes:
        """The chunk ending a blocked stream (see `refusal_chunk`); `dropped` is not needed."""
        return refusal_chunk(self, refusal, after_text=after_text)

    @property
    def indices(self) -> list[int]:
        return sorted(self._choices) or [0]

    def render(self) -> str:
        parts: list[str] = []
        for index in sorted(self._choices):
            parts.extend(self._choices[index].render())
        return "\n\n".join(parts)


def refusal_chunk(text: ResponseText, refusal: str, *, after_text: bool) -> bytes:
    """The one chunk that ends a blocked stream, followed by `[DONE]`.

    The delta carries the policy's refusal so that a chat UI (which shows content and ignores
    finish_reason) tells the user the answer was stopped on purpose rather than looking cut
    off. When text was already released, the refusal starts on a new paragraph.
    """
    delta: dict[str, str] = {}
    if refusal:
        delta["content"] = "\n\n" + refusal if after_text else refusal
    chunk = {
        "id": text.id,
        "object": "chat.completion.chunk",
        "created": text.created,
        "model": text.model,
        "choices": [
            {"index": i, "delta": delta, "finish_reason": "content_filter"} for i in text.indices
        ],
    }
    return encode_data(orjson.dumps(chunk)) + DONE


def error_event(error: GatewayError) -> bytes:
    """An OpenAI error envelope as an SSE event: the openai SDKs raise it as an APIError."""
    return encode_data(error.body())


def guard_error_event(reason: str) -> bytes:
    return error_event(
        GuardUnavailableError(f"The response could not be moderated ({reason}); it was stopped.")
    )


def upstream_error_event(detail: str) -> bytes:
    return error_event(
        UpstreamError(f"The upstream stream ended early: {detail}.", code="upstream_error")
    )
