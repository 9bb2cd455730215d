"""Doubles and helpers for the streaming moderation tests (test_holdback, test_stream_ends).

`RecordingCheck` is a guard double: it returns real `Verdict` objects, flags any text that
contains TRIGGER as a guard would, and records every text it saw and passed. `Upstream` is an
upstream byte-stream double that records how far it was read and whether it was closed.
Interleavings come from `asyncio.sleep(0)` counts drawn from seeded generators: nothing here
depends on wall-clock timing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from guard_engine.errors import GuardError
from guard_engine.types import Verdict
from proxy.moderation.message_text import content_text, message_reasoning
from proxy.sse import DONE, SSEParser, encode_data
from proxy.streaming import StreamMode, StreamOutcome, moderate_stream

TRIGGER = "forbidden"
ID = "chatcmpl-42"


async def until(condition: Callable[[], bool], *, turns: int = 10_000) -> None:
    """Lets other tasks run until `condition` holds; counts loop turns, not seconds."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


def verdict(flagged: bool) -> Verdict:
    return Verdict(
        stage="output",
        prompt_label="safe",
        response_label="unsafe" if flagged else "safe",
        categories=("Violence",) if flagged else (),
        score=None,
        think=None,
        raw="unsafe" if flagged else "safe",
        latency_ms=1.0,
        cache_hit=False,
        degraded=False,
        guard="double",
        model="double",
        policy="test@00000000",
        mode="binary",
    )


@dataclass
class RecordingCheck:
    """A guard double: flags text containing TRIGGER; records every text and its verdict."""

    rng: random.Random | None = None
    max_yields: int = 0
    gate: asyncio.Event | None = None
    fail: GuardError | None = None
    seen: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    running: int = 0
    max_running: int = 0

    async def __call__(self, text: str) -> Verdict:
        self.seen.append(text)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            for _ in range(self.rng.randint(0, self.max_yields) if self.rng else 0):
                await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            flagged = TRIGGER in text
            if not flagged:
                self.passed.append(text)
            return verdict(flagged)
        finally:
            self.running -= 1


@dataclass
class Upstream:
    """An upstream byte stream double that records how far it was read and whether it was closed."""

    chunks: list[bytes]
    rng: random.Random | None = None
    max_yields: int = 0
    fail_at: int | None = None
    pulled: int = 0
    closed: bool = False
    finished: bool = False

    async def stream(self) -> AsyncGenerator[bytes, None]:
        try:
            for i, chunk in enumerate(self.chunks):
                for _ in range(self.rng.randint(0, self.max_yields) if self.rng else 0):
                    await asyncio.sleep(0)
                if i == self.fail_at:
                    raise ConnectionResetError("peer reset")
                self.pulled += 1
                yield chunk
            self.finished = True
        finally:
            self.closed = True


def chunk(
    content: str | None = None,
    *,
    index: int = 0,
    role: str | None = None,
    tool: tuple[int, str | None, str] | None = None,
    finish: str | None = None,
    reasoning: tuple[str, Any] | None = None,
    parts: bool = False,
) -> bytes:
    """One chat.completion.chunk event. `reasoning` is (field, value), e.g.
    ("reasoning_content", "hm"); `parts` sends content as an array of text parts."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = [{"type": "text", "text": content}] if parts else content
    if reasoning is not None:
        delta[reasoning[0]] = reasoning[1]
    if tool is not None:
        slot, name, args = tool
        call: dict[str, Any] = {"index": slot, "function": {"arguments": args}}
        if name is not None:
            call.update(id=f"call_{slot}", type="function")
            call["function"]["name"] = name
        delta["tool_calls"] = [call]
    body = {
        "id": ID,
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "up-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    return encode_data(orjson.dumps(body))


USAGE = encode_data(
    orjson.dumps(
        {
            "id": ID,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "up-model",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
        }
    )
)


def answer(words: list[str], **kw: Any) -> list[bytes]:
    words_ = [chunk(w, **kw) for w in words]
    return [chunk(role="assistant", content=""), *words_, chunk(finish="stop"), USAGE, DONE]


def split(data: bytes, rng: random.Random, largest: int = 60) -> list[bytes]:
    """Re-chunks a byte stream at random points, as TCP may."""
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, largest)
        out.append(data[i : i + n])
        i += n
    return out


@dataclass
class Client:
    """What an SSE client reconstructs from the bytes it received."""

    raw: bytes = b""
    content: dict[int, str] = field(default_factory=dict)
    args: dict[int, str] = field(default_factory=dict)
    payloads: list[Any] = field(default_factory=list)
    refusal: dict[int, str] = field(default_factory=dict)  # the gateway's content_filter chunk
    reasoning: dict[int, str] = field(default_factory=dict)  # every reasoning field, joined
    done: bool = False

    def receive(self, data: bytes) -> None:
        self.raw += data

    def parse(self) -> Client:
        parser = SSEParser()
        for event in parser.feed(self.raw) + parser.flush():
            if event.data is None:
                continue
            if event.is_done:
                self.done = True
                continue
            try:
                body = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue  # a client skips what it cannot parse
            self.payloads.append(body)
            for choice in body.get("choices") or []:
                delta = choice.get("delta") or {}
                i = choice["index"]
                if choice.get("finish_reason") == "content_filter":
                    self.refusal[i] = delta.get("content") or ""
                    continue
                self.content[i] = self.content.get(i, "") + content_text(delta.get("content"))
                shown = message_reasoning(delta)
                if shown:
                    self.reasoning[i] = self.reasoning.get(i, "") + shown
                for call in delta.get("tool_calls") or []:
                    fn = call["function"]
                    self.args[i] = self.args.get(i, "") + fn.get("name", "") + fn["arguments"]
        return self


async def run(
    chunks: list[bytes],
    check: RecordingCheck,
    *,
    mode: StreamMode = "holdback",
    holdback: int = 20,
    upstream: Upstream | None = None,
    on_yield: Any = None,
    first_window: int | None = None,
    strip_reasoning: bool = False,
    on_uncheckable: Literal["refuse", "flag"] = "refuse",
) -> tuple[Client, StreamOutcome, Upstream]:
    up = upstream or Upstream(chunks)
    outcome = StreamOutcome()
    client = Client()
    stream = moderate_stream(
        up.stream(),
        mode=mode,
        holdback_chars=holdback,
        check=check,
        refusal="Sorry, I can't help with that.",
        outcome=outcome,
        first_window_chars=first_window,
        strip_reasoning=strip_reasoning,
        on_uncheckable=on_uncheckable,
    )
    async for data in stream:
        client.receive(data)
        if on_yield is not None:
            on_yield(client, check)
    await outcome.settled()
    return client.parse(), outcome, up


def assert_covered(client: Client, check: RecordingCheck) -> None:
    """THE INVARIANT: everything received is inside a text the guard passed."""
    received = Client(raw=client.raw).parse()
    for text in [*received.content.values(), *received.reasoning.values()]:
        if text:
            assert any(text in ok for ok in check.passed), text
    for text in received.args.values():
        assert any(text in ok.replace("(", "").replace(")", "") for ok in check.passed), text


async def drain(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([d async for d in stream])


def without_comments(raw: bytes) -> tuple[bytes, list[bytes]]:
    """The data events in order, and the comment events, which may be sent early."""
    parser = SSEParser()
    events = parser.feed(raw) + parser.flush()
    comments = [e.raw for e in events if e.raw.startswith(b":")]
    return b"".join(e.raw for e in events if not e.raw.startswith(b":")), comments
