"""A tiny OpenAI-compatible chat server for litellm tests, run with uvicorn on 127.0.0.1.

litellm's `openai/<model>` provider with `api_base` pointed here exercises litellm's real
request building, response parsing, streaming and exception mapping without the network.

Behaviour (as the OpenAI API documents it):
- non-streaming: a `chat.completion` echoing the last user message as `echo: <text>`;
- `stream: true`: `chat.completion.chunk` SSE events, one per word, then `data: [DONE]`;
  with `stream_options.include_usage` a final chunk carries `usage` and empty `choices`;
- a last user message `status:<code>` answers that HTTP status with an OpenAI error body;
- `sleep:<seconds>` waits before answering (for timeouts);
- `die:<n>` (streaming) sends n chunks, then drops the connection without `[DONE]`;
- `echo-auth:<code>` answers that status with an error whose message repeats the
  Authorization header received (as some providers and proxies do);
- every request body and its Authorization header are recorded in `requests`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_ERRORS = {
    400: ("invalid_request_error", "bad_request", "Invalid request from target."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error."),
    503: ("server_error", None, "The engine is currently overloaded."),
}


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class LiteLLMTarget:
    """Holds the recorded requests; `app` is the ASGI application."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body: dict[str, Any] = orjson.loads(await request.body())
        self.requests.append(body)
        self.authorizations.append(request.headers.get("authorization"))
        text = _last_user_text(body)
        if text.startswith("sleep:"):
            await asyncio.sleep(float(text.removeprefix("sleep:")))
        if text.startswith("echo-auth:"):
            status = int(text.removeprefix("echo-auth:"))
            received = request.headers.get("authorization", "")
            message = f"Invalid credentials: {received}"
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            return Response(orjson.dumps({"error": error}), status, media_type="application/json")
        if text.startswith("status:"):
            status = int(text.removeprefix("status:"))
            kind, code, message = _ERRORS.get(status, ("server_error", None, "error"))
            error = {"message": message, "type": kind, "param": None, "code": code}
            return Response(orjson.dumps({"error": error}), status, media_type="application/json")
        reply = f"echo: {text}"
        if body.get("stream"):
            return StreamingResponse(self._chunks(body, reply), media_type="text/event-stream")
        return Response(orjson.dumps(self._completion(body, reply)), media_type="application/json")

    @staticmethod
    def _usage(body: dict[str, Any], reply: str) -> dict[str, int]:
        prompt = len(_last_user_text(body).split())
        completion = len(reply.split())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, body: dict[str, Any], reply: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-target",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(body, reply),
        }

    async def _chunks(self, body: dict[str, Any], reply: str) -> AsyncIterator[bytes]:
        base = {
            "id": "chatcmpl-target",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        words = reply.split(" ")
        text = _last_user_text(body)
        die_after = int(text.removeprefix("die:")) if text.startswith("die:") else None
        for i, word in enumerate(words):
            if i == die_after:
                # An exception after the headers makes uvicorn abort the connection.
                raise ConnectionAbortedError("target died mid-stream")
            delta: dict[str, Any] = {"content": word if i == 0 else f" {word}"}
            if i == 0:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            yield b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield b"data: " + orjson.dumps({**base, "choices": [last]}) + b"\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": self._usage(body, reply)}
            yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"


class ServerThread:
    """Runs an ASGI app under uvicorn in a daemon thread on an ephemeral 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("test server failed to start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
