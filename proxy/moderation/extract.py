"""Read what the guard must judge out of OpenAI chat bodies.

Input side (DESIGN section 1): the last user message and its images by default;
`scope: conversation` adds earlier turns as context; `include_tool_results` adds tool results
that follow the last user message; system prompts only when the policy asks. Output side: the
assistant text of every choice plus tool-call names and arguments (they are output too).

Anything the guard cannot judge (audio, files, unknown part types, malformed parts) is
collected as `uncheckable` with the request path of the part, so the policy can refuse or flag
it; it is never forwarded as if it had passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guard_engine.policy.compiled import InputSettings
from guard_engine.types import Turn


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


def extract_input(messages: list[dict[str, Any]], settings: InputSettings) -> InputContent:
    out = InputContent()
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None
    )
    if last_user is None:
        return out
    out.prompt = _message_parts(messages[last_user], last_user, out, with_images=True)
    if settings.scope == "conversation" or settings.include_system:
        for i, message in enumerate(messages[:last_user]):
            role = str(message.get("role"))
            if role in ("system", "developer") and not settings.include_system:
                continue
            if role not in ("system", "developer") and settings.scope != "conversation":
                continue
            if role == "tool" and not settings.include_tool_results:
                continue
            # Earlier images are context too: the guard sees them when the scope says so.
            text = _message_parts(message, i, out, with_images=settings.scope == "conversation")
            text = text or _tool_call_text(message)
            if text:
                out.context.append(Turn(role=role, text=text))
    if settings.include_tool_results:
        tool_texts = [
            _message_parts(m, last_user + 1 + k, out, with_images=True)
            for k, m in enumerate(messages[last_user + 1 :])
            if m.get("role") == "tool"
        ]
        tool_texts = [t for t in tool_texts if t]
        if tool_texts:
            out.prompt = (
                "\n\n".join([out.prompt, *tool_texts]) if out.prompt else "\n\n".join(tool_texts)
            )
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
    """All assistant text of a chat.completion: every choice's content and tool calls."""
    texts: list[str] = []
    choices = response.get("choices")
    if not isinstance(choices, list):
        return ""
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str) and content:
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        calls = _tool_call_text(message)
        if calls:
            texts.append(calls)
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            texts.append(f"{legacy.get('name', '')}({legacy.get('arguments', '')})")
    return "\n\n".join(texts)
