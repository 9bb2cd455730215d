"""The upstream double's legacy completions (`POST /v1/completions`), as OpenAI sends them:
a `text_completion` object, or `text_completion` chunks (each choice's `text`), a usage chunk
when `stream_options.include_usage`, then `data: [DONE]`. Steered by `x-double-reply` and
`x-double-chunks` like chat."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import orjson

USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def _reply(headers: dict[str, str]) -> str | None:
    raw = headers.get("x-double-reply")
    return urllib.parse.unquote(raw) if raw else None


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return str(prompt)


def completion(headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    text = _reply(headers) or f"double says: {_prompt(body)}"
    return {
        "id": "cmpl-double",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": USAGE,
    }


def stream_events(headers: dict[str, str], body: dict[str, Any], chunks: int) -> list[bytes]:
    base = {
        "id": "cmpl-double",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
    }
    reply = _reply(headers)
    if reply is not None:
        words = reply.split(" ")
        pieces = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
    else:
        pieces = [f"word{i} " for i in range(chunks)]

    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    events = [chunk(p, None) for p in pieces]
    events.append(chunk("", "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": USAGE}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events
