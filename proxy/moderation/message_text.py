"""The text an assistant message (or a streamed delta of one) shows: content and reasoning.

Shared by the non-streaming output check (`extract.extract_output`) and the streaming one
(`proxy.streaming.chunks.ResponseText`), so that both read the same fields the same way.

Content may be a string or an array of parts (`[{"type": "text", "text": "..."}]`, also in
streamed deltas). Reasoning comes under three names: `reasoning_content` (DeepSeek, vLLM,
SGLang), `reasoning` (vLLM's newer name, OpenRouter, Groq; a string, or an object or array in
some providers) and `reasoning_details` (OpenRouter: an array of typed objects). A client can
show all of it, so all of it is output. So is an audio answer's transcript. Content parts the
gateway cannot read as text are reported (`unreadable_content`) so the policy's
`on_uncheckable` rule can decide, never passed as if they carried nothing.
"""

from __future__ import annotations

from typing import Any

# Every field under which providers deliver the model's reasoning to the client.
REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details")

# Keys of reasoning objects that hold no readable text: ids, type tags, signatures and
# encrypted blobs (which the client cannot read either). Every other string is judged.
# The keys of a content part that hold its text (`{"type": "text", "text": ...}`, refusals).
_PART_TEXT = ("text", "refusal")

_OPAQUE_KEYS = frozenset({"type", "id", "format", "signature", "data", "encrypted_content"})


def content_text(value: object, sep: str = "") -> str:
    """The text of a `content` field: a string, or the text (and refusal) of its parts."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return ""
    texts: list[str] = []
    for part in value:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            for key in _PART_TEXT:
                if isinstance(part.get(key), str):
                    texts.append(part[key])
    return sep.join(t for t in texts if t)


def unreadable_content(value: object) -> bool:
    """True when `content` holds something the gateway cannot read as text: a part without a
    `text` or `refusal` string (an image, audio, an unknown type) or a value of another type.
    What it shows is not what a guard would judge, so it is uncheckable output."""
    if value is None or isinstance(value, str):
        return False
    if not isinstance(value, list):
        return True
    return not all(
        isinstance(part, str)
        or (isinstance(part, dict) and any(isinstance(part.get(k), str) for k in _PART_TEXT))
        for part in value
    )


def audio_transcript(message: dict[str, Any]) -> str:
    """The transcript of an audio answer (`audio.transcript`): what the model said aloud."""
    audio = message.get("audio")
    transcript = audio.get("transcript") if isinstance(audio, dict) else None
    return transcript if isinstance(transcript, str) else ""


def reasoning_text(value: object) -> str:
    """Every readable string of a reasoning value, whatever its shape, in document order."""
    texts: list[str] = []
    _collect(value, texts)
    return "".join(texts)


def _collect(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        if value:
            out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _OPAQUE_KEYS:
                _collect(item, out)


def message_reasoning(message: dict[str, Any]) -> str:
    """All reasoning text of one message or delta (every field that carries it)."""
    return "".join(reasoning_text(message[f]) for f in REASONING_FIELDS if f in message)


def strip_reasoning(message: dict[str, Any]) -> bool:
    """Removes every reasoning field from a message or delta; True if there was one."""
    found = False
    for name in REASONING_FIELDS:
        if name in message:
            del message[name]
            found = True
    return found


def strip_choices(payload: dict[str, Any], key: str) -> bool:
    """Strips reasoning from `choices[].<key>` (`message` in a body, `delta` in a chunk)."""
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return False
    found = False
    for choice in choices:
        target = choice.get(key) if isinstance(choice, dict) else None
        if isinstance(target, dict) and strip_reasoning(target):
            found = True
    return found
