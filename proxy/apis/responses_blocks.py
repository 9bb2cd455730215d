"""What a block looks like in the Responses API: the refusal as an output item, a whole
refusal response, the same as stream events, and an answer with its output replaced.

Shared by the adapter (`proxy.apis.responses`) and its stream reader
(`proxy.apis.responses_stream`), which would otherwise import each other.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.request_body import ChatBody


def refusal_item(request_id: str, refusal: str) -> dict[str, Any]:
    """An assistant message whose only text is the refusal."""
    return {
        "type": "message",
        "id": f"msg_guardline_{request_id}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": refusal, "annotations": [], "logprobs": []}],
    }


_ZERO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 0,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 0,
}


def refusal_response(body: ChatBody, request_id: str, refusal: str, status: str) -> dict[str, Any]:
    """A whole Response object written by the gateway (input blocked) in `status`."""
    data = body.data
    return {
        "id": f"resp_guardline_{request_id}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": data.get("instructions"),
        "max_output_tokens": data.get("max_output_tokens"),
        "model": body.model,
        "output": [refusal_item(request_id, refusal)] if status == "completed" else [],
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "previous_response_id": data.get("previous_response_id"),
        "reasoning": data.get("reasoning"),
        "store": data.get("store", True),
        "temperature": data.get("temperature"),
        "text": data.get("text", {"format": {"type": "text"}}),
        "tool_choice": data.get("tool_choice", "auto"),
        "tools": data.get("tools", []),
        "top_p": data.get("top_p"),
        "truncation": data.get("truncation", "disabled"),
        "usage": _ZERO_USAGE if status == "completed" else None,
        "user": data.get("user"),
        "metadata": data.get("metadata", {}),
    }


def event(payload: dict[str, Any]) -> bytes:
    """One Responses SSE event: `event: <type>` and its JSON data, as OpenAI sends them."""
    kind = str(payload.get("type", "")).encode()
    return b"event: " + kind + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def message_events(
    item: dict[str, Any], output_index: int, seq: int
) -> tuple[list[dict[str, Any]], int]:
    """The events that stream one complete text message item, numbered from `seq`."""
    item_id = item["id"]
    part = item["content"][0]
    text = part["text"]
    where = {"item_id": item_id, "output_index": output_index, "content_index": 0}
    events: list[dict[str, Any]] = [
        {
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
        {"type": "response.output_text.delta", **where, "delta": text, "logprobs": []},
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": output_index, "item": item},
    ]
    for e in events:
        e["sequence_number"] = seq
        seq += 1
    return events, seq


def refusal_events(body: ChatBody, request_id: str, refusal: str) -> list[bytes]:
    """A streamed completed refusal: created, in_progress, the message, completed."""
    done = refusal_response(body, request_id, refusal, "completed")
    start = {**done, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": start},
        {"type": "response.in_progress", "sequence_number": 1, "response": start},
    ]
    items, seq = message_events(done["output"][0], 0, 2)
    events.extend(items)
    events.append({"type": "response.completed", "sequence_number": seq, "response": done})
    return [event(e) for e in events]


def blocked(response: dict[str, Any], refusal: str, request_id: str) -> dict[str, Any]:
    """`response` ended as blocked: incomplete (content_filter), output only the refusal."""
    response["status"] = "incomplete"
    response["incomplete_details"] = {"reason": "content_filter"}
    response["output"] = [refusal_item(request_id, refusal)] if refusal else []
    if "output_text" in response:  # a convenience field some compatible servers add
        response["output_text"] = refusal
    return response


def strip_output_reasoning(response: dict[str, Any]) -> bool:
    output = response.get("output")
    if not isinstance(output, list):
        return False
    kept = [i for i in output if not (isinstance(i, dict) and i.get("type") == "reasoning")]
    if len(kept) == len(output):
        return False
    response["output"] = kept
    return True
