"""The Responses API adapter (`POST {prefix}/v1/responses`), moderated like chat.

Input. The request is read into chat-shaped messages, so the chat rules apply unchanged
(`proxy.moderation.extract.extract_input`): `instructions` are the operator's and become a
system message (judged only with `include_system`); `input` as a string is one user message;
as items, `message` items keep their role (`input_text` parts are text, `input_image` parts
with an `image_url` are images loaded exactly as chat images, `input_file`, `input_audio` and
images given only as a `file_id` are content the guard cannot see), `function_call` items are
the assistant's tool calls and `function_call_output` (and other `*_output`) items are tool
results, judged when `include_tool_results` says so. So `scope: last_user` judges every user
item after the last assistant item. `previous_response_id`, `conversation`, `prompt` and
`item_reference` items point at context stored upstream: the gateway forwards them unchanged
and the guard sees only what the request itself carries.

Output. `proxy.apis.responses_text` reads an answer's text; `proxy.apis.responses_stream`
reads it from stream events. Blocks in the API's own terms: input blocked is a 400
`content_policy_violation` or (`on_block.input: refusal`) a completed response whose output is
the refusal; output blocked is the response with `status: "incomplete"`,
`incomplete_details.reason: "content_filter"` and its output replaced by the refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from proxy.apis.base import send_to
from proxy.apis.body import ApiBody, param_namer
from proxy.apis.responses_blocks import (
    blocked,
    refusal_events,
    refusal_response,
    strip_output_reasoning,
)
from proxy.apis.responses_text import read_output
from proxy.errors import InvalidField
from proxy.request_body import ChatBody, decode_with_model, stream_flag, type_error
from proxy.streaming.holdback import StreamText
from proxy.upstreams.reply import ChatUpstream, RawHeaders, UpstreamReply

# The roles of a Responses input message (EasyInputMessage / InputMessage in openapi.yaml).
ROLES = ("user", "assistant", "system", "developer")


# Input items the model produced in an earlier turn (they end the user's turn, like an
# assistant message in chat), and items that carry no content to judge.
_MODEL_ITEMS = frozenset(
    {
        "reasoning",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "shell_call",
        "apply_patch_call",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "compaction",
    }
)
_NOT_CONTENT = frozenset({"item_reference", "mcp_approval_response"})


def _part(part: Any, param: str) -> dict[str, Any]:
    """One Responses content part as a chat part (unknown kinds stay unknown: uncheckable)."""
    if not isinstance(part, dict):
        raise type_error(param, "an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, str) and url:
            return {"type": "image_url", "image_url": {"url": url}}
        return {"type": "input_image_file"}  # a file_id: the guard cannot fetch it
    return {"type": str(kind)}


def _content(value: Any, param: str) -> str | list[dict[str, Any]] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise type_error(param, "a string or an array")
    return [_part(p, f"{param}[{j}]") for j, p in enumerate(value)]


def _item(item: Any, param: str) -> tuple[dict[str, Any] | None, str]:
    """One input item as a chat message (None: nothing the guard reads) and its content key."""
    if not isinstance(item, dict):
        raise type_error(param, "an object")
    kind = item.get("type")
    if kind is None or kind == "message":
        role = item.get("role")
        if role is None:
            raise InvalidField(
                f"Missing required parameter: '{param}.role'.",
                param=f"{param}.role",
                code="missing_required_parameter",
            )
        if role not in ROLES:
            allowed = ", ".join(f"'{r}'" for r in ROLES)
            raise InvalidField(
                f"Invalid value: {role!r} for '{param}.role'. Supported values are: {allowed}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        return {"role": role, "content": _content(item.get("content"), f"{param}.content")}, (
            "content"
        )
    if not isinstance(kind, str):
        raise type_error(f"{param}.type", "a string")
    if kind.endswith("_output"):  # function_call_output, custom_tool_call_output, ...
        output = item.get("output")
        content = output if isinstance(output, (str, list)) else None
        return {"role": "tool", "content": _content(content, f"{param}.output")}, "output"
    if kind in ("function_call", "custom_tool_call"):
        args = item.get("arguments", item.get("input", ""))
        function = {"name": item.get("name", ""), "arguments": args}
        return {"role": "assistant", "content": None, "tool_calls": [{"function": function}]}, ""
    if kind in _NOT_CONTENT:
        return None, ""  # stored upstream (item_reference), or a yes/no with no text
    if kind in _MODEL_ITEMS:
        # What the model produced earlier (reasoning, tool calls): the assistant's turn.
        return {"role": "assistant", "content": None}, ""
    # A type this gateway does not know may carry anything: content the guard cannot see.
    return {"role": "user", "content": {"type": kind}}, ""


def parse_responses_body(raw: bytes) -> ApiBody:
    """Decode and check a Responses request; raises InvalidJSON or InvalidField (400)."""
    data, model = decode_with_model(raw)
    stream = stream_flag(data)

    if data.get("background") is True:
        # The answer would be fetched later (GET /v1/responses/{id}), past the output check.
        raise InvalidField(
            "background responses cannot be moderated by guardline (their output is fetched "
            "later, where no output check runs); send the request without `background`.",
            param="background",
            code="unsupported_parameter",
        )
    messages: list[dict[str, Any]] = []
    params: list[str] = []
    content_params: list[str] = []
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise type_error("instructions", "a string")
        messages.append({"role": "system", "content": instructions})
        params.append("instructions")
        content_params.append("instructions")
    items = data.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        params.append("input")
        content_params.append("input")
    elif isinstance(items, list):
        for i, item in enumerate(items):
            message, key = _item(item, f"input[{i}]")
            if message is not None:
                messages.append(message)
                params.append(f"input[{i}]")
                content_params.append(f"input[{i}].{key}" if key else f"input[{i}]")
    elif items is not None:
        raise type_error("input", "a string or an array")
    return ApiBody(
        raw,
        data,
        model,
        messages,
        stream,
        include_usage=False,
        params=tuple(params),
        content_params=tuple(content_params),
    )


class ResponsesApi:
    name = "responses"

    def param_namer(self, body: ChatBody) -> Callable[[str], str] | None:
        return param_namer(body)

    def output_text(self, data: dict[str, Any]) -> str:
        return read_output(data)[0].render()

    def uncheckable_output(self, data: dict[str, Any]) -> list[str]:
        return read_output(data)[1]

    def strip_reasoning(self, data: dict[str, Any]) -> bool:
        return strip_output_reasoning(data)

    def redact(self, data: dict[str, Any], refusal: str) -> bytes:
        rid = str(data.get("id") or "response")
        return orjson.dumps(blocked(data, refusal, rid))

    def refusal_body(self, body: ChatBody, request_id: str, refusal: str) -> bytes:
        return orjson.dumps(refusal_response(body, request_id, refusal, "completed"))

    def refusal_events(self, body: ChatBody, request_id: str, refusal: str) -> list[bytes]:
        return refusal_events(body, request_id, refusal)

    def new_stream_text(self) -> StreamText:
        from proxy.apis.responses_stream import ResponsesStreamText

        return ResponsesStreamText()

    def strip_stream(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        from proxy.apis.responses_stream import strip_reasoning_events

        return strip_reasoning_events(stream)

    async def send(
        self, upstream: ChatUpstream, body: ChatBody, headers: RawHeaders
    ) -> UpstreamReply:
        return await send_to(upstream, "responses", "The Responses API is", body, headers)


RESPONSES = ResponsesApi()
