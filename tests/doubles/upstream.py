"""An OpenAI-compatible upstream double, told how to behave by request headers.

It serves `POST /v1/chat/completions` and `GET /v1/models` the way OpenAI does (JSON, or SSE
chunks ending with `data: [DONE]`, a usage chunk when `stream_options.include_usage`), and
`POST /v1/responses` (a Response object, or its typed SSE events: see `responses_api.py`) and
`POST /v1/completions` (legacy `text_completion`s: `completions_api.py`), and
records what it received and which clients went away. Request headers steer it:

    x-double-status: 429          answer with this status and an OpenAI error envelope
    x-double-delay-ms: 200        wait before the response headers
    x-double-chunks: 5            content chunks in a stream (default 3)
    x-double-chunk-delay-ms: 50   wait between stream chunks
    x-double-tool-calls: 1        answer with a tool call instead of text
    x-double-die-after: 2         stream: break the connection after this many chunks
    x-double-echo: 1              add the received body and headers to the answer (`echo`);
                                  with x-double-status, the error message and an `echo` field
                                  repeat the headers received (as some upstreams echo
                                  `Authorization`)
    x-double-error-body: html     with x-double-status: answer a text/html page (not an OpenAI
                                  envelope) that also shows the Authorization received
    x-double-id: abc              name this request in `disconnects` / `wait_disconnect`
    x-double-reasoning: text      the answer carries this reasoning first (streamed word by word)
    x-double-reasoning-field: f   ...under `reasoning_content` (default, as vLLM and DeepSeek),
                                  `reasoning` (string) or `reasoning_details` (OpenRouter's
                                  array of typed objects)
    x-double-content-parts: 1     content as an array of text parts (also in stream deltas);
                                  `image`: and one image part after the text (as providers that
                                  generate images through chat completions send)
    x-double-malformed-after: 2   stream: after this many content chunks, one event whose data
                                  is cut-off JSON (carrying text), as a broken provider sends
    x-double-reply: Sure%2C%20... answer with this text (percent-encoded UTF-8); a stream sends
                                  it word by word
    x-double-stream-error: 2      stream: after this many content chunks, an error event that
                                  repeats the Authorization received (as some providers echo
                                  it), sent in two network chunks split inside that value, and
                                  the stream ends there (no [DONE])

Embeddings, image generation, audio transcription, files: `tests/doubles/endpoints.py`.

Every answer carries a vendor field (`x_double`) and a vendor header (`x-double-served`) so
tests can check that unknown fields pass through the gateway in both directions.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from tests.doubles import completions_api, responses_api
from tests.doubles.endpoints import STREAMED_UPLOAD, EndpointsDouble


class DoubleDied(Exception):
    """Raised inside the ASGI app to make the server drop the connection mid-stream."""


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    target: bytes = b""  # the raw path and query string, as they arrived

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class UpstreamDouble:
    """The ASGI app. Thread-safe to inspect from the test thread while a server runs it."""

    received: list[Received] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    endpoints: EndpointsDouble = field(default_factory=EndpointsDouble)
    _events: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _event(self, request_id: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(request_id, threading.Event())

    def wait_disconnect(self, request_id: str, timeout: float = 10.0) -> bool:
        """Block until the request named by `x-double-id` saw its client go away."""
        return self._event(request_id).wait(timeout)

    def last(self) -> Received:
        return self.received[-1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["type"] == "http"
        if scope["path"] == STREAMED_UPLOAD:  # read as it arrives: tests/doubles/endpoints.py
            await self.endpoints.streamed_upload(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"")
        target = scope.get("raw_path", b"") + (b"?" + query if query else b"")
        self.received.append(Received(scope["method"], scope["path"], headers, body, target))
        path = scope["path"]
        if path == "/v1/models" and scope["method"] == "GET":
            status = int(headers.get("x-double-status", "200"))
            if status != 200:
                error = {"message": f"double error {status}", "type": "double_error"}
                await _json(send, status, {"error": {**error, "param": None, "code": "x"}})
                return
            await _json(send, 200, {"object": "list", "data": [_model("double-model")]})
        elif path == "/v1/chat/completions" and scope["method"] == "POST":
            await self._chat(headers, body, receive, send)
        elif path == "/v1/responses" and scope["method"] == "POST":
            await self._chat(headers, body, receive, send, api="responses")
        elif path == "/v1/completions" and scope["method"] == "POST":
            await self._chat(headers, body, receive, send, api="completions")
        elif await self.endpoints.serve(scope["method"], path, headers, body, receive, send):
            pass  # embeddings, images, audio, files: tests/doubles/endpoints.py
        else:
            error = {"message": f"no route {path}", "type": "invalid_request_error"}
            await _json(send, 404, {"error": {**error, "param": None, "code": None}})

    async def _chat(
        self,
        headers: dict[str, str],
        raw: bytes,
        receive: Receive,
        send: Send,
        api: str = "chat",
    ) -> None:
        request_id = headers.get("x-double-id", "")
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            delay = int(headers.get("x-double-delay-ms", "0")) / 1000
            if delay and await _gone_within(gone, delay):
                self._record(request_id)
                return
            status = int(headers.get("x-double-status", "200"))
            if status != 200:
                await _error(send, status, headers)
                return
            body = orjson.loads(raw)
            echo = {"body": body, "headers": headers} if headers.get("x-double-echo") else None
            if body.get("stream"):
                finished = await self._stream(headers, body, echo, gone, send, api)
                if not finished:
                    self._record(request_id)
            elif api == "responses":
                await _json(send, 200, responses_api.response(headers, body, echo))
            elif api == "completions":
                await _json(send, 200, completions_api.completion(headers, body))
            else:
                await _json(send, 200, _completion(headers, body, echo))
        finally:
            gone.cancel()

    def _record(self, request_id: str) -> None:
        self.disconnects.append(request_id)
        self._event(request_id).set()

    async def _stream(
        self,
        headers: dict[str, str],
        body: dict[str, Any],
        echo: dict[str, Any] | None,
        gone: asyncio.Future[None],
        send: Send,
        api: str = "chat",
    ) -> bool:
        """Send the SSE stream; False when the client went away before it ended."""
        chunks = int(headers.get("x-double-chunks", "3"))
        delay = int(headers.get("x-double-chunk-delay-ms", "0")) / 1000
        die_after = int(headers.get("x-double-die-after", "-1"))
        tools = bool(headers.get("x-double-tool-calls"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"x-double-served", b"1"),
                ],
            }
        )
        if api == "responses":
            events = responses_api.stream_events(headers, body, chunks, echo)
        elif api == "completions":
            events = completions_api.stream_events(headers, body, chunks)
        else:
            events = _stream_events(body, chunks, tools, echo, headers)
        error_after = int(headers.get("x-double-stream-error", "-1"))
        if error_after >= 0:
            events = [*events[: error_after + 1], *_error_event(headers)]
        for i, event in enumerate(events):
            if i == die_after:
                raise DoubleDied("the double breaks the stream on request")
            if delay and i and await _gone_within(gone, delay):
                return False
            if gone.done():
                return False
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _gone_within(gone: asyncio.Future[None], seconds: float) -> bool:
    done, _ = await asyncio.wait({gone}, timeout=seconds)
    return bool(done)


async def _json(send: Send, status: int, payload: Any) -> None:
    data = orjson.dumps(payload)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"x-double-served", b"1"),
            (b"x-request-id", b"req_double"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": data})


async def _error(send: Send, status: int, headers: dict[str, str]) -> None:
    auth = headers.get("authorization", "")
    if headers.get("x-double-error-body") == "html":
        page = f"<html><body><h1>{status} Bad Gateway</h1><p>{auth}</p></body></html>".encode()
        start: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/html"), (b"x-double-served", b"1")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": page})
        return
    message = f"double error {status}"
    payload: dict[str, Any] = {"x_double": True}
    if headers.get("x-double-echo"):
        message += f" (received Authorization: {auth})"
        payload["echo"] = {"headers": headers}
    error = {"message": message, "type": "double_error", "param": None, "code": "x"}
    await _json(send, status, {"error": error, **payload})


def _error_event(headers: dict[str, str]) -> list[bytes]:
    """A mid-stream error event echoing the Authorization received, in two network chunks cut
    in the middle of that value (a gateway must find a secret split across chunks)."""
    auth = headers.get("authorization", "")
    error = {
        "message": f"double stream failed (received Authorization: {auth})",
        "type": "server_error",
        "param": None,
        "code": "double_stream_error",
    }
    event = b"data: " + orjson.dumps({"error": error}) + b"\n\n"
    cut = event.find(auth.encode()) + len(auth) // 2 if auth else len(event) // 2
    return [event[:cut], event[cut:]]


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "double"}


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                p.get("text", f"<{p.get('type')}>") for p in content if isinstance(p, dict)
            )
    return ""


_TOOL_ID = "call_double_1"
_TOOL_NAME = "get_weather"
_TOOL_ARGS = '{"city": "Paris"}'
_USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def _completion(
    headers: dict[str, str], body: dict[str, Any], echo: dict[str, Any] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if headers.get("x-double-tool-calls"):
        message["tool_calls"] = [
            {
                "id": _TOOL_ID,
                "type": "function",
                "function": {"name": _TOOL_NAME, "arguments": _TOOL_ARGS},
            }
        ]
        finish = "tool_calls"
    else:
        text = _reply(headers) or f"double says: {_last_user_text(body)}"
        message["content"] = _content(headers, text)
        finish = "stop"
    reasoning = headers.get("x-double-reasoning")
    if reasoning:
        field = headers.get("x-double-reasoning-field", "reasoning_content")
        message[field] = _reasoning(field, reasoning)
    out: dict[str, Any] = {
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _USAGE,
        "x_double": {"vendor": True},
    }
    if echo is not None:
        out["echo"] = echo
    return out


def _reply(headers: dict[str, str]) -> str | None:
    raw = headers.get("x-double-reply")
    return urllib.parse.unquote(raw) if raw else None


def _content(headers: dict[str, str], text: str) -> Any:
    """Content as a string, or as an array of text parts when the test asks for that form."""
    form = headers.get("x-double-content-parts")
    if form == "image":
        return [{"type": "text", "text": text}, _IMAGE_PART]
    if form:
        return [{"type": "text", "text": text}]
    return text


_IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def _reasoning(field: str, text: str) -> Any:
    """A reasoning value in the shape of the field that carries it."""
    if field == "reasoning_details":
        return [{"type": "reasoning.text", "text": text, "format": "unknown", "index": 0}]
    return text


def _stream_events(
    body: dict[str, Any],
    chunks: int,
    tools: bool,
    echo: dict[str, Any] | None,
    headers: dict[str, str] | None = None,
) -> list[bytes]:
    base = {
        "id": "chatcmpl-double",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "x_double": {"vendor": True},
    }

    def chunk(
        delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice], **(extra or {})}) + b"\n\n"

    headers = headers or {}
    first_extra = {"echo": echo} if echo is not None else None
    events = [chunk({"role": "assistant", "content": ""}, None, first_extra)]
    reasoning = headers.get("x-double-reasoning")
    if reasoning:
        field = headers.get("x-double-reasoning-field", "reasoning_content")
        for word in reasoning.split(" "):
            events.append(chunk({field: _reasoning(field, word + " ")}))
    malformed_after = int(headers.get("x-double-malformed-after", "-1"))
    if tools:
        call = {"index": 0, "id": _TOOL_ID, "type": "function"}
        events.append(
            chunk({"tool_calls": [{**call, "function": {"name": _TOOL_NAME, "arguments": ""}}]})
        )
        step = max(1, len(_TOOL_ARGS) // max(chunks, 1))
        for i in range(0, len(_TOOL_ARGS), step):
            part = _TOOL_ARGS[i : i + step]
            events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        events.append(chunk({}, "tool_calls"))
    elif headers and _reply(headers) is not None:
        words = (_reply(headers) or "").split(" ")
        events.extend(
            chunk({"content": w if i == len(words) - 1 else w + " "}) for i, w in enumerate(words)
        )
        events.append(chunk({}, "stop"))
    else:
        for i in range(chunks):
            if i == malformed_after:
                # A provider bug: the JSON is cut off, but a client's lenient parser could
                # still show the text in it.
                events.append(b'data: {"choices":[{"index":0,"delta":{"content":"pipe bomb\n\n')
            events.append(chunk({"content": _content(headers, f"word{i} ")}))
        events.append(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {**base, "choices": [], "usage": _USAGE}
        events.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events
