"""What a block looks like to an OpenAI SDK (docs/architecture.md, "The request path").

Input blocked: 400 `content_policy_violation` (default) or a 200 refusal with
`finish_reason: "content_filter"`. Output blocked: 200 with the refusal in place of the
assistant's content. Never a 5xx: SDKs retry those.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from guard_engine.policy.compiled import CompiledPolicy
from proxy.errors import ContentPolicyViolation
from proxy.moderation.message_text import strip_reasoning
from proxy.sse import DONE, encode_data


def input_violation(policy: CompiledPolicy, categories: tuple[str, ...]) -> ContentPolicyViolation:
    detail = f" ({', '.join(categories)})" if categories else ""
    return ContentPolicyViolation(
        f"This request was blocked by the content policy {policy.ref}{detail}.",
    )


def refusal_completion(*, request_id: str, model: str, refusal: str) -> bytes:
    """A complete chat.completion that refuses (input blocked with `on_block.input: refusal`)."""
    body = {
        "id": f"chatcmpl-guardline-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": refusal, "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return orjson.dumps(body)


def refusal_stream(
    *, request_id: str, model: str, refusal: str, include_usage: bool
) -> list[bytes]:
    """The SSE events of a streamed refusal: role, content + content_filter, [usage], [DONE]."""
    base = {
        "id": f"chatcmpl-guardline-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return encode_data(orjson.dumps({**base, "choices": choices, **extra}))

    events = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": refusal}, "finish_reason": "content_filter"}]),
    ]
    if include_usage:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        events.append(chunk([], usage=usage))
    events.append(DONE)
    return events


def redact_completion(body: dict[str, Any], refusal: str) -> bytes:
    """The upstream's chat.completion with every choice's output (reasoning, refusal and tool
    calls included) replaced by the refusal.

    Everything else (id, model, usage, unknown fields) is kept: the client still learns what
    the call cost.
    """
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            message["content"] = refusal
            for key in ("tool_calls", "function_call", "audio"):
                message.pop(key, None)
            strip_reasoning(message)  # judged with the answer, so refused with it
            if message.get("refusal"):
                message["refusal"] = None
        choice["finish_reason"] = "content_filter"
        if "logprobs" in choice:
            choice["logprobs"] = None
    return orjson.dumps(body)
