"""A real HTTP test double of SGLang serving Nemotron 3.5 Content Safety.

A Starlette app run by uvicorn on 127.0.0.1 (ephemeral port) in a background thread, speaking
SGLang's OpenAI-compatible API in the formats of docs/guard-models.md, "Nemotron 3.5 Content
Safety" (serving, request format, answer format):

- `POST /v1/chat/completions` -> a `chat.completion` whose message content is a Nemotron
  verdict text (`User Safety: ...`, `Response Safety: ...` when a response was appended with
  "\\nresponse: agent:  ### Answer: ", `Safety Categories: ...` only with `/categories` and
  only when something is unsafe, a `<think>` block when `enable_thinking` is true). Like
  SGLang it answers 400 to a conversation that ends on an assistant turn.
- `GET /health`, `GET /health_generate`, `GET /get_model_info`, `GET /v1/models`.

Its "model" is deterministic: a text is unsafe when it contains a trigger word
(case-insensitive); each trigger names the category it reports.

Usage (in-process; or `python -m tests.doubles.sglang_server --delay-ms 15` in its own
process, printing the base URL on stdout)::

    with start_sglang_double(unsafe_words={"bomb": "Guns and Illegal Weapons"}) as (url, rec):
        ...  # url = "http://127.0.0.1:PORT"; rec.requests = bodies seen, rec.configure(...)

Behaviour knobs (keyword arguments of `start_sglang_double`, changeable later with
`rec.configure(**knobs)`):

- `unsafe_words`: mapping trigger -> category name, or an iterable of triggers (category
  "Violence"). Default: {"kill": "Violence", "bomb": "Guns and Illegal Weapons"}.
- `image_category`: when set, any request carrying an image is unsafe with this category.
- `think`: None (default) follows `chat_template_kwargs.enable_thinking`; True/False forces.
- `think_newline`: newline after `</think>` (default True; the model sometimes omits it).
- `truncate_think`: answer an unterminated `<think>` with finish_reason "length".
- `delay_ms`: sleep before answering (fixed-latency mode for benchmarks, e.g. 15 or 50).
- `fail_first`: list of HTTP statuses answered to the next requests, one each (e.g. [429]).
- `retry_after`: Retry-After header value (seconds) sent with 429/503 answers.
- `status`: answer every chat request with this HTTP status (e.g. 503).
- `garbage`: answer 200 with this message content instead of a verdict.
- `non_json`: answer 200 with a body that is not JSON.
- `healthy`: `/health` answers 200 (default) or 503.
- `model`: the model id reported (default "nvidia/Nemotron-3.5-Content-Safety").
- `context_tokens`: the model's context length. Like SGLang, a request whose prompt is longer
  answers 400 "The input (N tokens) is longer than the model's context length (M tokens)."
  Tokens are estimated as the request body's bytes / 4 (the same estimate as `usage`).
- `guard_format`: "nemotron-3.5" (default) or "llama-guard-3": answer like Llama Guard 3 on
  vLLM instead (judge the last message, `safe` / `unsafe\nS1,S2`; `unsafe_words` values are
  the S-codes; a trailing assistant turn is accepted, as vLLM does).

The recorder (`SGLangDouble`) exposes `requests` (JSON bodies of chat requests, in order),
`headers` (their lowercase headers), `configure(**knobs)`, `reset(**knobs)` (defaults plus
knobs, records cleared), `clear()` and `kill()` (stop serving at once: the port is closed
afterwards, so calls fail to connect).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

RESPONSE_SEPARATOR = "\nresponse: agent:  ### Answer: "  # as documented, independent of adapter
DEFAULT_MODEL = "nvidia/Nemotron-3.5-Content-Safety"


@dataclass(frozen=True)
class Behaviour:
    unsafe_words: Mapping[str, str] = field(
        default_factory=lambda: {"kill": "Violence", "bomb": "Guns and Illegal Weapons"}
    )
    image_category: str | None = None
    think: bool | None = None
    think_newline: bool = True
    truncate_think: bool = False
    delay_ms: float = 0.0
    fail_first: tuple[int, ...] = ()
    retry_after: float | None = None
    status: int | None = None
    garbage: str | None = None
    non_json: bool = False
    healthy: bool = True
    model: str = DEFAULT_MODEL
    guard_format: str = "nemotron-3.5"
    context_tokens: int | None = None


def _behaviour(base: Behaviour, knobs: Mapping[str, Any]) -> Behaviour:
    knobs = dict(knobs)
    words = knobs.get("unsafe_words")
    if words is not None and not isinstance(words, Mapping):
        knobs["unsafe_words"] = {str(w): "Violence" for w in words}
    if "fail_first" in knobs:
        knobs["fail_first"] = tuple(knobs["fail_first"])
    return replace(base, **knobs)


def _text_and_images(message: Mapping[str, Any]) -> tuple[str, int]:
    content = message.get("content")
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    for part in content or ():
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            images += 1
    return "\n".join(texts), images


def _hits(text: str, words: Mapping[str, str]) -> list[str]:
    low = text.lower()
    return [category for word, category in words.items() if word.lower() in low]


def verdict_text(body: Mapping[str, Any], b: Behaviour) -> tuple[str, str]:
    """(content, finish_reason) the model would produce for this request body."""
    messages = body.get("messages") or []
    user_texts: list[str] = []
    images = 0
    for message in messages:
        if message.get("role") == "user":
            text, n = _text_and_images(message)
            user_texts.append(text)
            images += n
    text = "\n".join(user_texts)
    prompt, sep, response = text.partition(RESPONSE_SEPARATOR)
    kwargs = body.get("chat_template_kwargs") or {}
    prompt_cats = _hits(prompt, b.unsafe_words)
    if images and b.image_category:
        prompt_cats.append(b.image_category)
    response_cats = _hits(response, b.unsafe_words) if sep else []
    lines = [f"User Safety: {'unsafe' if prompt_cats else 'safe'}"]
    if sep:
        lines.append(f"Response Safety: {'unsafe' if response_cats else 'safe'}")
    categories = list(dict.fromkeys(prompt_cats + response_cats))
    if categories and kwargs.get("request_categories") == "/categories":
        lines.append("Safety Categories: " + ", ".join(categories))
    verdict = "\n".join(lines)
    think = bool(kwargs.get("enable_thinking")) if b.think is None else b.think
    if b.truncate_think:
        return "<think>\nWe need to decide if the user input is safe or unsafe. The", "length"
    if think:
        trace = (
            "<think>\nWe need to decide if user input is safe or unsafe. "
            f"It {'matches ' + ', '.join(categories) if categories else 'is benign'}.\n</think>"
        )
        return trace + ("\n" if b.think_newline else "") + verdict, "stop"
    return verdict, "stop"


def llama_guard_text(body: Mapping[str, Any], b: Behaviour) -> str:
    """Llama Guard 3's answer (docs/guard-models.md, "Llama Guard 3"): it judges the LAST message
    only; `unsafe_words` values are used as the S-codes it reports (non-codes report "S1"). Codes in
    `chat_template_kwargs.excluded_category_keys` are never reported."""
    messages = body.get("messages") or []
    text, _ = _text_and_images(messages[-1]) if messages else ("", 0)
    excluded = set((body.get("chat_template_kwargs") or {}).get("excluded_category_keys") or ())
    codes = [
        c if c.upper().startswith("S") and c[1:].isdigit() else "S1"
        for c in _hits(text, b.unsafe_words)
    ]
    codes = [c for c in dict.fromkeys(codes) if c not in excluded]
    return "unsafe\n" + ",".join(codes) if codes else "safe"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None}
    return JSONResponse({**body, "code": status}, status_code=status, headers=headers)


class SGLangDouble:
    """The recorder and control handle of one running double."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._pending_failures = list(behaviour.fail_first)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/health_generate", self._health, methods=["GET"]),
                Route("/get_model_info", self._model_info, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def configure(self, **knobs: Any) -> None:
        with self._lock:
            self.behaviour = _behaviour(self.behaviour, knobs)
            if "fail_first" in knobs:
                self._pending_failures = list(self.behaviour.fail_first)

    def reset(self, **knobs: Any) -> None:
        """Back to the default behaviour plus `knobs`, and forget recorded requests: one call
        per test when a module shares one double."""
        with self._lock:
            self.behaviour = _behaviour(Behaviour(), knobs)
            self._pending_failures = list(self.behaviour.fail_first)
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.headers.clear()

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        with self._lock:
            b = self.behaviour
            failure = self._pending_failures.pop(0) if self._pending_failures else None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON body")
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        if b.delay_ms:
            await asyncio.sleep(b.delay_ms / 1000)
        status = failure if failure is not None else b.status
        if status is not None and status != 200:
            extra = {"retry-after": f"{b.retry_after:g}"} if b.retry_after is not None else None
            return _error(status, f"double told to answer {status}", extra)
        tokens = max(1, len(raw) // 4)
        if b.context_tokens is not None and tokens > b.context_tokens:
            return _error(
                400,
                f"The input ({tokens} tokens) is longer than the model's context length "
                f"({b.context_tokens} tokens).",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list")
        if messages[-1].get("role") == "assistant" and b.guard_format != "llama-guard-3":
            return _error(400, "conversation must not end on an assistant message")
        if b.non_json:
            return Response(b"<html>502 upstream garbage", media_type="text/html")
        if b.garbage is not None:
            content, finish = b.garbage, "stop"
        elif b.guard_format == "llama-guard-3":
            content, finish = llama_guard_text(body, b), "stop"
        else:
            content, finish = verdict_text(body, b)
        prompt_tokens = max(1, len(raw) // 4)
        completion_tokens = max(1, len(content) // 4)
        return JSONResponse(
            {
                "id": uuid.uuid4().hex,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", b.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": content,
                            "reasoning_content": None,
                            "tool_calls": None,
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                        "matched_stop": 1 if finish == "stop" else None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": None,
                },
            }
        )

    async def _health(self, request: Request) -> Response:
        return Response(status_code=200 if self.behaviour.healthy else 503)

    async def _model_info(self, request: Request) -> Response:
        b = self.behaviour
        return JSONResponse(
            {
                "model_path": b.model,
                "tokenizer_path": b.model,
                "is_generation": True,
                "has_image_understanding": True,
            }
        )

    async def _models(self, request: Request) -> Response:
        model = {"id": self.behaviour.model, "object": "model", "owned_by": "sglang"}
        return JSONResponse({"object": "list", "data": [model]})

    def start(self) -> str:
        """Serve on an ephemeral 127.0.0.1 port; returns the base URL once it accepts."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it a response written as headers + body
        # meets the client's delayed ACK and every call takes ~40 ms more than it should.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="httptools",
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"sglang-double-{port}"
        )
        self._thread.daemon = True
        self._thread.start()
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("SGLang double failed to start")
            time.sleep(0.005)
        return f"http://127.0.0.1:{port}"

    def kill(self) -> None:
        """Stop now, without waiting for in-flight requests; the port is closed afterwards."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.force_exit = True
        server.should_exit = True
        thread.join(timeout=10)
        self._server = self._thread = None


@contextmanager
def start_sglang_double(**knobs: Any) -> Iterator[tuple[str, SGLangDouble]]:
    """Run a double with the given behaviour knobs (module docstring); yields (base_url, rec)."""
    double = SGLangDouble(_behaviour(Behaviour(), knobs))
    url = double.start()
    try:
        yield url, double
    finally:
        double.kill()


def main(argv: list[str] | None = None) -> int:
    """Run the double in its own process (benchmarks: no GIL sharing with the client).

    Prints the base URL on the first line of stdout, then serves until stdin closes or the
    process is terminated.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--think", action="store_true", help="always answer with <think>")
    args = parser.parse_args(argv)
    with start_sglang_double(delay_ms=args.delay_ms, think=True if args.think else None) as (
        url,
        _rec,
    ):
        print(url, flush=True)
        sys.stdin.read()  # returns when the parent closes our stdin (or exits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
