"""The upstream double's Responses API (`POST /v1/responses`), as openapi.yaml documents it.

Non-streamed: one `Response` object (`object: "response"`, `status: "completed"`, `output`
items, `usage` with input/output tokens). Streamed: typed SSE events (`event: <type>` and JSON
data with `type` and `sequence_number`) in OpenAI's order: `response.created`,
`response.in_progress`, then per output item `response.output_item.added`, its parts
(`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`; or `response.function_call_arguments.delta`... and `.done`; or a
reasoning summary's `response.reasoning_summary_part.added`, `..._text.delta`..., `.done`),
`response.output_item.done`, and `response.completed` carrying the whole response.

Steered by the same headers as chat (`x-double-reply`, `x-double-chunks`, `x-double-tool-calls`,
`x-double-reasoning`, `x-double-echo`, ...), plus:

    x-double-final-only: 1   stream: no deltas, the text only in the done events and the
                             terminal `response.completed` (as a server that does not stream
                             token by token may send)
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import orjson

TOOL_CALL_ID = "call_double_1"
TOOL_NAME = "get_weather"
TOOL_ARGS = '{"city": "Paris"}'
USAGE = {
    "input_tokens": 7,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 12,
}


def _reply(headers: dict[str, str]) -> str | None:
    raw = headers.get("x-double-reply")
    return urllib.parse.unquote(raw) if raw else None


def last_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                p.get("text", f"<{p.get('type')}>") for p in content if isinstance(p, dict)
            )
    return ""


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_double_1",
        "status": "completed",
        "role": "assistant",
        "content": [_text_part(text)],
    }


def _call() -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_double_1",
        "call_id": TOOL_CALL_ID,
        "name": TOOL_NAME,
        "arguments": TOOL_ARGS,
        "status": "completed",
    }


def _reasoning(text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": "rs_double_1",
        "summary": [{"type": "summary_text", "text": text}],
    }


def _envelope(body: dict[str, Any], status: str, output: list[Any]) -> dict[str, Any]:
    return {
        "id": "resp_double_1",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", ""),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": body.get("tools", []),
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": USAGE if status == "completed" else None,
        "user": None,
        "metadata": {},
        "x_double": {"vendor": True},
    }


def _output(headers: dict[str, str], text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    reasoning = headers.get("x-double-reasoning")
    if reasoning:
        out.append(_reasoning(reasoning))
    out.append(_call() if headers.get("x-double-tool-calls") else _message(text))
    return out


def response(
    headers: dict[str, str], body: dict[str, Any], echo: dict[str, Any] | None
) -> dict[str, Any]:
    text = _reply(headers) or f"double says: {last_user_text(body)}"
    out = _envelope(body, "completed", _output(headers, text))
    if echo is not None:
        out["echo"] = echo
    return out


def stream_events(
    headers: dict[str, str], body: dict[str, Any], chunks: int, echo: dict[str, Any] | None
) -> list[bytes]:
    reply = _reply(headers)
    if reply is not None:
        words = reply.split(" ")
        pieces = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
    else:
        pieces = [f"word{i} " for i in range(chunks)]
    final_only = bool(headers.get("x-double-final-only"))
    output = _output(headers, "".join(pieces))
    done = _envelope(body, "completed", output)
    if echo is not None:
        done["echo"] = echo
    start = {**done, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
    ]
    for index, item in enumerate(output):
        events.extend(_item_events(item, index, pieces, final_only))
    events.append({"type": "response.completed", "response": done})
    out = []
    for seq, e in enumerate(events):
        e["sequence_number"] = seq
        out.append(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n")
    return out


def _split(text: str, n: int) -> list[str]:
    step = max(1, len(text) // max(n, 1))
    return [text[i : i + step] for i in range(0, len(text), step)]


def _item_events(
    item: dict[str, Any], index: int, pieces: list[str], final_only: bool
) -> list[dict[str, Any]]:
    at = {"item_id": item["id"], "output_index": index}
    kind = item["type"]
    if kind == "message":
        added = {**item, "status": "in_progress", "content": []}
        part = item["content"][0]
        where = {**at, "content_index": 0}
        deltas = [] if final_only else pieces
        return [
            {"type": "response.output_item.added", "output_index": index, "item": added},
            {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
            *(
                {"type": "response.output_text.delta", **where, "delta": d, "logprobs": []}
                for d in deltas
            ),
            {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    if kind == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        deltas = [] if final_only else _split(item["arguments"], len(pieces))
        return [
            {"type": "response.output_item.added", "output_index": index, "item": added},
            *({"type": "response.function_call_arguments.delta", **at, "delta": d} for d in deltas),
            {
                "type": "response.function_call_arguments.done",
                **at,
                "name": item["name"],
                "arguments": item["arguments"],
            },
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]
    # reasoning: one summary part, streamed word by word
    summary = item["summary"][0]
    where = {**at, "summary_index": 0}
    words = summary["text"].split(" ")
    deltas = (
        [] if final_only else [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
    )
    return [
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            **where,
            "part": {"type": "summary_text", "text": ""},
        },
        *({"type": "response.reasoning_summary_text.delta", **where, "delta": d} for d in deltas),
        {"type": "response.reasoning_summary_text.done", **where, "text": summary["text"]},
        {"type": "response.reasoning_summary_part.done", **where, "part": summary},
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ]
