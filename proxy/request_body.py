"""Parse a chat completion request body once and validate only what the gateway reads.

The body stays the client's: unknown fields are never looked at, and the original bytes are
what gets forwarded, unless the model name must be rewritten (model alias). Only `model`,
`messages` (each one an object with a role OpenAI knows), `stream` and `stream_options` are
checked, each error naming the field in `param` the way OpenAI does.

Roles are checked because moderation reads them: a message whose role is `"User"`, a number or
missing would be judged as nobody's and forwarded unchecked, while the upstream may still read
it as the user's. OpenAI itself refuses such a message, so the gateway does the same, first.

The checks every API body begins with (`decode_with_model`, `stream_flag`, `type_error`) live
here too; the other APIs' parsers (`proxy.apis.completions`, `proxy.apis.responses`) use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import InvalidField, InvalidJSON, InvalidRequest

# The roles of OpenAI's ChatCompletionRequestMessage (openapi.yaml), spelled exactly so.
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass(slots=True)
class ChatBody:
    """A parsed request: the original bytes, the decoded object and the fields the gateway uses."""

    raw: bytes
    data: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool

    def with_model(self, model: str) -> bytes:
        """The body re-encoded with another model name (the only rewrite the gateway makes)."""
        if model == self.model:
            return self.raw
        return orjson.dumps({**self.data, "model": model})


def type_error(param: str, expected: str) -> InvalidField:
    """OpenAI's 400 for a field of the wrong type, naming it in `param`."""
    return InvalidField(f"Invalid type for '{param}': expected {expected}.", param=param)


def decode_with_model(raw: bytes) -> tuple[dict[str, Any], str]:
    """The body as a JSON object and its `model` (a string), the checks every API begins with;
    raises InvalidJSON, InvalidRequest or InvalidField (400)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"We could not parse the JSON body of your request. ({exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    model = data.get("model")
    if model is None:
        raise InvalidField(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str):
        raise type_error("model", "a string")
    return data, model


def stream_flag(data: dict[str, Any]) -> bool:
    """`stream`: absent or null is False; anything but a boolean is a 400."""
    stream = data.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise type_error("stream", "a boolean")
    return stream


def parse_chat_body(raw: bytes) -> ChatBody:
    """Decode and check `raw`; raises InvalidJSON or InvalidField (400) with `param` set."""
    data, model = decode_with_model(raw)

    messages = data.get("messages")
    if messages is None:
        raise InvalidField(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise type_error("messages", "an array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise type_error(f"messages[{i}]", "an object")
    for i, message in enumerate(messages):
        _check_role(message, f"messages[{i}].role")

    stream = stream_flag(data)

    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise type_error("stream_options", "an object")
        include_usage = options.get("include_usage") is True

    return ChatBody(raw, data, model, messages, stream, include_usage)


def _check_role(message: dict[str, Any], param: str) -> None:
    role = message.get("role")
    if role is None:
        raise InvalidField(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if not isinstance(role, str):
        raise type_error(param, "a string")
    if role not in ROLES:
        allowed = ", ".join(f"'{r}'" for r in ROLES)
        raise InvalidField(
            f"Invalid value: {role!r} for '{param}'. Supported values are: {allowed}.",
            param=param,
            code="invalid_value",
        )
