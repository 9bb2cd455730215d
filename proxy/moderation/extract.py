"""Read what the guard must judge out of OpenAI chat bodies.

Input side (docs/architecture.md, "The request path"): by default (`scope: last_user`) every user
message of the current turn (all of them after the last assistant message, with their images);
`scope: conversation` adds earlier turns as context; `include_tool_results` adds the tool results of
the current turn; system prompts only when the policy asks. Output side: everything the model wrote
in every choice: reasoning, content, refusal, tool-call names and arguments (all of it reaches the
client, so all of it is output).

Anything the guard cannot judge (audio, files, unknown part types, malformed parts) is
collected as `uncheckable` with the request path of the part, so the policy can refuse or flag
it; it is never forwarded as if it had passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guard_engine.policy.compiled import InputSettings
from guard_engine.types import Turn
from proxy.moderation.message_text import (
    audio_transcript,
    content_text,
    message_reasoning,
    unreadable_content,
)


@dataclass(frozen=True, slots=True)
class ImageRef:
    url: str
    param: str  # e.g. messages[3].content[0]


@dataclass(slots=True)
class InputContent:
    prompt: str = ""
    images: list[ImageRef] = field(default_factory=list)
    context: list[Turn] = field(default_factory=list)
    uncheckable: list[str] = field(default_factory=list)  # params of parts the guard cannot see

    @property
    def empty(self) -> bool:
        return not self.prompt.strip() and not self.images and not self.context


def _message_parts(
    message: dict[str, Any], index: int, out: InputContent, *, with_images: bool
) -> str:
    """The text of one message; images and uncheckable parts are recorded in `out`."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        out.uncheckable.append(f"messages[{index}].content")
        return ""
    texts: list[str] = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and with_images:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                out.images.append(ImageRef(url=url, param=param))
            else:
                out.uncheckable.append(param)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            out.uncheckable.append(param)
    return "\n".join(texts)


_TOOL_ROLES = ("tool", "function")  # `function` is the deprecated form of a tool result
_SYSTEM_ROLES = ("system", "developer")


def current_turn(messages: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(start, last user index) of the turn being asked, or None without a user message.

    The turn starts after the last assistant message before the last user message: every user
    message in it is what the user is asking now. Judging only the last one would let
    `[{user: <harmful>}, {user: "thanks"}]` through on "thanks" alone.
    """
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None
    )
    if last_user is None:
        return None
    start = next(
        (i + 1 for i in range(last_user - 1, -1, -1) if messages[i].get("role") == "assistant"),
        0,
    )
    return start, last_user


def extract_input(messages: list[dict[str, Any]], settings: InputSettings) -> InputContent:
    out = InputContent()
    turn = current_turn(messages)
    if turn is None:
        return out
    start, last_user = turn
    # The prompt: every user message of the current turn and, when the policy says so, every
    # tool result from the turn on, in message order (a tool result may follow the user's
    # question or precede a follow-up of it).
    judged: list[str] = []
    in_prompt: set[int] = set()
    for i in range(start, len(messages)):
        role = messages[i].get("role")
        is_user = role == "user" and i <= last_user
        if not (is_user or (role in _TOOL_ROLES and settings.include_tool_results)):
            continue
        in_prompt.add(i)
        text = _message_parts(messages[i], i, out, with_images=True)
        if text:
            judged.append(text)
    out.prompt = "\n\n".join(judged)
    if settings.scope == "conversation" or settings.include_system:
        for i, message in enumerate(messages[:last_user]):
            if i in in_prompt:
                continue
            role = str(message.get("role"))
            if role in _SYSTEM_ROLES and not settings.include_system:
                continue
            if role not in _SYSTEM_ROLES and settings.scope != "conversation":
                continue
            if role in _TOOL_ROLES and not settings.include_tool_results:
                continue
            # Earlier images are context too: the guard sees them when the scope says so.
            text = _message_parts(message, i, out, with_images=settings.scope == "conversation")
            text = text or _tool_call_text(message)
            if text:
                out.context.append(Turn(role=role, text=text))
    return out


def _tool_call_text(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return ""
    parts = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(parts)


def extract_output(response: dict[str, Any]) -> str:
    """All assistant text of a chat.completion: every choice's reasoning (in any of the fields
    providers use), content (string or parts), refusal and tool calls."""
    texts: list[str] = []
    choices = response.get("choices")
    if not isinstance(choices, list):
        return ""
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        texts.append(message_reasoning(message))
        texts.append(content_text(message.get("content"), sep="\n\n"))
        texts.append(content_text(message.get("refusal")))
        texts.append(audio_transcript(message))
        texts.append(_tool_call_text(message))
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            texts.append(f"{legacy.get('name', '')}({legacy.get('arguments', '')})")
    return "\n\n".join(t for t in texts if t)


def uncheckable_output(response: dict[str, Any]) -> list[str]:
    """Paths of assistant content the gateway cannot read as text (see unreadable_content)."""
    choices = response.get("choices")
    if not isinstance(choices, list):
        return []
    out: list[str] = []
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and unreadable_content(message.get("content")):
            out.append(f"choices[{i}].message.content")
    return out
