"""The text of a Responses API answer, item by item: one model for complete bodies and streams.

An answer's `output` is a list of items. What a client can show of them is output text:
`message` items' `output_text` and `refusal` parts, `function_call` (and custom tool, MCP)
calls as `name(arguments)`, `reasoning` items' summary and reasoning text, code the code
interpreter runs, file search results. `OutputText` holds that text per item (output index)
and renders it the same way whether it was read from a body or assembled from stream events,
so a streamed answer's final check judges exactly what the non-streamed check would.

Items whose content no guard can read (a generated image, parts of unknown types, items of
unknown types) are reported as uncheckable, for the policy's `on_uncheckable` rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Output items that show the client no text of their own (tool activity without content).
_SILENT_ITEMS = frozenset(
    {
        "web_search_call",
        "computer_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
        "mcp_list_tools",
        "compaction",
    }
)
# Items of these types call a tool with arguments: rendered as name(arguments), as in chat.
_CALL_ITEMS = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "mcp_call": "arguments",
    "mcp_approval_request": "arguments",
}


@dataclass(slots=True)
class ItemText:
    """One output item's text: parts keyed by where they come from, in first-seen order."""

    kind: str = ""
    name: str = ""
    parts: dict[tuple[str, int], str] = field(default_factory=dict)

    def set(self, key: tuple[str, int], value: str) -> int:
        """Sets a part to its complete value; returns the characters that are new to a check
        (all of them when the value is not what the deltas said, else none)."""
        if self.parts.get(key, "") == value:
            return 0
        self.parts[key] = value
        return len(value)

    def add(self, key: tuple[str, int], delta: str) -> int:
        self.parts[key] = self.parts.get(key, "") + delta
        return len(delta)

    def render(self) -> str:
        if self.kind in _CALL_ITEMS:
            args = self.parts.get(("args", 0), "")
            rest = [v for k, v in self.parts.items() if k != ("args", 0) and v]
            return "\n\n".join([f"{self.name}({args})", *rest])
        return "\n\n".join(v for v in self.parts.values() if v)


def _text_of(part: object) -> str:
    if not isinstance(part, dict):
        return ""
    for key in ("text", "refusal"):
        value = part.get(key)
        if isinstance(value, str):
            return value
    return ""


def apply_item(state: ItemText, item: dict[str, Any]) -> tuple[int, bool]:
    """Reads a complete item into `state`: (characters new to a check, readable)."""
    kind = item.get("type")
    state.kind = kind if isinstance(kind, str) else state.kind
    name = item.get("name")
    if isinstance(name, str) and name != state.name:
        state.name = name
    added = 0
    readable = True
    if state.kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            added += state.set(("content", 0), content)
        elif isinstance(content, list):
            for i, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("output_text", "refusal", "input_text", "text"):
                    added += state.set(("content", i), _text_of(part))
                else:
                    readable = False
        elif content is not None:
            readable = False
    elif state.kind in _CALL_ITEMS:
        value = item.get(_CALL_ITEMS[state.kind])
        if isinstance(value, str):
            added += state.set(("args", 0), value)
        output = item.get("output")
        if isinstance(output, str) and output:
            added += state.set(("output", 0), output)
    elif state.kind == "reasoning":
        for key in ("summary", "content"):
            parts = item.get(key)
            if isinstance(parts, list):
                for i, part in enumerate(parts):
                    added += state.set((key, i), _text_of(part))
    elif state.kind == "code_interpreter_call":
        code = item.get("code")
        if isinstance(code, str):
            added += state.set(("code", 0), code)
        outputs = item.get("outputs")
        if isinstance(outputs, list):
            for i, out in enumerate(outputs):
                logs = out.get("logs") if isinstance(out, dict) else None
                if isinstance(logs, str):
                    added += state.set(("logs", i), logs)
                elif isinstance(out, dict) and out.get("type") == "image":
                    readable = False
    elif state.kind == "file_search_call":
        results = item.get("results")
        if isinstance(results, list):
            for i, result in enumerate(results):
                added += state.set(("results", i), _text_of(result))
    elif state.kind not in _SILENT_ITEMS:
        readable = False  # an image generation call, or a type this gateway does not know
    return added, readable


class OutputText:
    """Output text per output index."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict[int, ItemText] = {}

    def item(self, index: int) -> ItemText:
        state = self.items.get(index)
        if state is None:
            state = self.items[index] = ItemText()
        return state

    def render(self) -> str:
        texts = (self.items[i].render() for i in sorted(self.items))
        return "\n\n".join(t for t in texts if t)


def read_output(response: dict[str, Any]) -> tuple[OutputText, list[str]]:
    """A complete response's output text and the paths of what cannot be read."""
    text = OutputText()
    unreadable: list[str] = []
    output = response.get("output")
    if not isinstance(output, list):
        return text, unreadable
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            unreadable.append(f"output[{i}]")
            continue
        _, readable = apply_item(text.item(i), item)
        if not readable:
            unreadable.append(f"output[{i}]")
    return text, unreadable
