"""Streaming output moderation: hold-back, buffer and monitor modes, blocks and failures.

The check is a recording double that returns real `Verdict` objects and flags any text that
contains a trigger word, as a guard would. Interleavings come from `asyncio.sleep(0)` counts
drawn from seeded generators: nothing here depends on wall-clock timing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from guard_engine.errors import GuardError, GuardTimeout
from guard_engine.types import Verdict
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
) -> bytes:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
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
                self.content[i] = self.content.get(i, "") + (delta.get("content") or "")
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
    for text in received.content.values():
        if text:
            assert any(text in ok for ok in check.passed), text
    for text in received.args.values():
        assert any(text in ok.replace("(", "").replace(")", "") for ok in check.passed), text


# ---------------------------------------------------------------- hold-back


async def test_safe_stream_is_forwarded_byte_for_byte() -> None:
    words = [f"word{i} " for i in range(30)]
    chunks = answer(words)
    check = RecordingCheck()
    client, outcome, up = await run(chunks, check, holdback=50)
    assert client.raw == b"".join(chunks)
    assert client.content[0] == "".join(words)
    assert check.seen[-1] == "".join(words)  # the whole answer is checked at the end
    assert all(len(b) - len(a) >= 50 for a, b in zip(check.seen, check.seen[1:-1], strict=False))
    assert outcome.checks == len(check.seen) and not outcome.blocked and outcome.completed
    assert outcome.released_chars == len("".join(words))
    assert outcome.usage == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    assert outcome.model == "up-model"
    assert [v.flagged for v in outcome.verdicts] == [False] * outcome.checks
    assert up.closed and up.finished


async def test_role_chunk_goes_out_before_any_check() -> None:
    chunks = answer(["hello ", "there"])
    first: list[tuple[bytes, int]] = []

    def on_yield(client: Client, check: RecordingCheck) -> None:
        first.append((client.raw, len(check.seen)))

    _, _, _ = await run(chunks, RecordingCheck(), on_yield=on_yield)
    assert first[0] == (chunks[0], 0)


async def test_release_waits_for_the_covering_check_and_reading_continues() -> None:
    gate = asyncio.Event()
    check = RecordingCheck(gate=gate)
    up = Upstream(answer(["a" * 10] * 6))
    outcome = StreamOutcome()
    stream = moderate_stream(
        up.stream(), mode="holdback", holdback_chars=15, check=check, refusal="", outcome=outcome
    )
    received: list[bytes] = []

    async def consume() -> None:
        async for data in stream:
            received.append(data)

    task = asyncio.create_task(consume())
    await until(lambda: up.pulled == len(up.chunks))  # the guard is stuck, upstream is read
    assert received == [up.chunks[0]]  # only the role chunk
    assert check.seen == ["a" * 20]  # first window: two chunks; one check in flight
    gate.set()
    await task
    assert b"".join(received) == b"".join(up.chunks)
    assert check.max_running == 1
    assert check.seen[-1] == "a" * 60


async def test_tool_call_deltas_are_held_and_checked_with_the_text() -> None:
    chunks = [
        chunk(role="assistant", content=None),
        chunk(tool=(0, "get_weather", "")),
        chunk(tool=(0, None, '{"city": ')),
        chunk(tool=(0, None, '"Paris"}')),
        chunk(tool=(1, "send_email", '{"to": "a@b.c"}')),
        chunk(finish="tool_calls"),
        DONE,
    ]
    check = RecordingCheck()
    client, outcome, _ = await run(chunks, check, holdback=1000)
    assert check.seen == ['get_weather({"city": "Paris"})\nsend_email({"to": "a@b.c"})']
    assert client.raw == b"".join(chunks)
    assert outcome.released_chars == len('get_weather{"city": "Paris"}send_email{"to": "a@b.c"}')


async def test_tool_call_with_forbidden_arguments_is_blocked() -> None:
    chunks = [
        chunk(role="assistant", content="Let me look."),
        chunk(tool=(0, "search", '{"q": "')),
        chunk(tool=(0, None, f'{TRIGGER} stuff"}}')),
        chunk(finish="tool_calls"),
        DONE,
    ]
    check = RecordingCheck()
    client, outcome, _ = await run(chunks, check, holdback=5)
    assert outcome.blocked
    assert "search" not in client.args.get(0, "") or TRIGGER not in client.args[0]
    assert TRIGGER not in client.raw.decode()


async def test_n2_both_choices_are_checked_together() -> None:
    chunks = [
        chunk(role="assistant", content="", index=0),
        chunk(role="assistant", content="", index=1),
        chunk("first ", index=0),
        chunk("second ", index=1),
        chunk("answer", index=0),
        chunk("answer", index=1),
        chunk(finish="stop", index=0),
        chunk(finish="stop", index=1),
        DONE,
    ]
    check = RecordingCheck()
    client, _, _ = await run(chunks, check, holdback=1000)
    assert check.seen == ["first answer\n\nsecond answer"]
    assert client.content == {0: "first answer", 1: "second answer"}


async def test_n2_flag_in_one_choice_ends_both() -> None:
    chunks = [
        chunk("fine", index=0),
        chunk(f"so {TRIGGER}", index=1),
        chunk(finish="stop", index=0),
        chunk(finish="stop", index=1),
        DONE,
    ]
    client, outcome, _ = await run(chunks, RecordingCheck(), holdback=1000)
    last = client.payloads[-1]
    assert outcome.blocked
    assert [c["index"] for c in last["choices"]] == [0, 1]
    assert {c["finish_reason"] for c in last["choices"]} == {"content_filter"}


async def test_final_check_starts_at_finish_reason_before_usage_and_done() -> None:
    gate = asyncio.Event()
    check = RecordingCheck(gate=gate)
    up = Upstream(answer(["short"]))
    outcome = StreamOutcome()
    stream = moderate_stream(
        up.stream(), mode="holdback", holdback_chars=400, check=check, refusal="", outcome=outcome
    )
    task = asyncio.create_task(_drain(stream))
    await until(lambda: bool(check.seen))
    assert check.seen == ["short"]
    gate.set()
    raw = await task
    # The usage chunk and [DONE] come after the checked text, never before it.
    assert raw == b"".join(up.chunks)
    assert outcome.checks == 1


async def _drain(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([d async for d in stream])


def without_comments(raw: bytes) -> tuple[bytes, list[bytes]]:
    """The data events in order, and the comment events, which may be sent early."""
    parser = SSEParser()
    events = parser.feed(raw) + parser.flush()
    comments = [e.raw for e in events if e.raw.startswith(b":")]
    return b"".join(e.raw for e in events if not e.raw.startswith(b":")), comments


async def test_keep_alive_comments_and_crlf_framing_preserved() -> None:
    body = b"".join(answer(["one ", "two ", "three"])).replace(b"\n", b"\r\n")
    body = body.replace(b"data: [DONE]", b": ping\r\n\r\ndata: [DONE]")
    check = RecordingCheck()
    client, outcome, _ = await run(split(body, random.Random(3)), check, holdback=4)
    assert client.raw == body  # here the comment arrives after every text was checked
    assert check.seen[-1] == "one two three"
    assert outcome.completed


async def test_malformed_json_waits_for_the_text_before_it() -> None:
    bad = b"data: {not json\n\n"
    chunks = [chunk("hello "), bad, chunk("world"), chunk(finish="stop"), DONE]
    order: list[tuple[bytes, list[str]]] = []
    check = RecordingCheck()

    def on_yield(client: Client, check: RecordingCheck) -> None:
        order.append((client.raw, list(check.passed)))

    client, outcome, _ = await run(chunks, check, holdback=1000, on_yield=on_yield)
    assert client.raw == b"".join(chunks)
    for raw, passed in order:
        if bad in raw:
            assert passed  # released only after the text before it was checked
    assert outcome.completed


# ---------------------------------------------------------------- blocks and failures


async def test_block_sends_one_content_filter_chunk_then_done_and_closes_upstream() -> None:
    words = ["This is ", "fine. ", "Now ", f"{TRIGGER} ", "words ", "follow ", "here."] * 3
    up = Upstream(answer(words))
    check = RecordingCheck()
    client, outcome, _ = await run([], check, holdback=8, upstream=up)
    assert outcome.blocked and up.closed and not up.finished
    assert client.done and client.raw.endswith(b"\n\n" + DONE)
    filters = [
        c
        for p in client.payloads
        for c in p["choices"]
        if c.get("finish_reason") == "content_filter"
    ]
    assert len(filters) == 1 and client.payloads[-1]["choices"] == filters
    last = client.payloads[-1]
    assert last["id"] == ID and last["model"] == "up-model" and last["created"] == 1700000000
    assert last["object"] == "chat.completion.chunk"
    released = client.content[0]
    assert client.refusal == {0: "\n\nSorry, I can't help with that."}
    assert TRIGGER not in released and released.startswith("This is fine.")
    assert outcome.verdicts[-1].flagged
    assert outcome.released_chars == len(released)


async def test_block_before_any_text_has_no_paragraph_break() -> None:
    client, outcome, _ = await run(answer([TRIGGER]), RecordingCheck(), holdback=400)
    assert outcome.blocked
    assert client.refusal[0] == "Sorry, I can't help with that."


async def test_guard_error_sends_error_event_and_closes_upstream() -> None:
    up = Upstream(answer(["x" * 10] * 10))
    check = RecordingCheck(fail=GuardTimeout("deadline passed", guard="g"))
    client, outcome, _ = await run([], check, holdback=15, upstream=up)
    assert isinstance(outcome.error, GuardTimeout)
    assert up.closed and not up.finished and not client.done
    err = client.payloads[-1]["error"]
    assert err["code"] == "guard_unavailable" and err["type"] == "guard_error"
    assert err["param"] is None and "timeout" in err["message"]
    assert client.content.get(0, "") == ""


async def test_unexpected_check_exception_fails_closed() -> None:
    async def broken(text: str) -> Verdict:
        raise KeyError("bug")

    outcome = StreamOutcome()
    stream = moderate_stream(
        Upstream(answer(["abc"])).stream(),
        mode="holdback",
        holdback_chars=1,
        check=broken,
        refusal="",
        outcome=outcome,
    )
    raw = await _drain(stream)
    assert b"abc" not in raw and b"guard_unavailable" in raw
    assert isinstance(outcome.error, GuardError)


@pytest.mark.parametrize("mode", ["holdback", "buffer"])
async def test_upstream_eof_without_done(mode: StreamMode) -> None:
    chunks = [chunk(role="assistant", content=""), chunk("partial "), chunk("answer")]
    check = RecordingCheck()
    client, outcome, up = await run([*chunks, b'data: {"trunc'], check, mode=mode, holdback=5)
    assert check.seen[-1] == "partial answer"
    assert client.content[0] == "partial answer"
    assert not client.done and not outcome.completed
    assert client.payloads[-1]["error"]["code"] == "upstream_error"
    assert outcome.upstream_error and up.closed


async def test_upstream_exception_mid_stream() -> None:
    up = Upstream(answer(["one ", "two ", "three "]), fail_at=3)
    client, outcome, _ = await run([], RecordingCheck(), holdback=3, upstream=up)
    assert client.content[0] == "one two "
    assert client.payloads[-1]["error"]["code"] == "upstream_error"
    assert outcome.upstream_error == "ConnectionResetError: peer reset"


async def test_trailing_done_without_blank_line_completes() -> None:
    chunks = [chunk("hi"), b"data: [DONE]"]
    client, outcome, _ = await run(chunks, RecordingCheck())
    assert outcome.completed and client.done and client.content[0] == "hi"


async def test_client_disconnect_cancels_check_and_closes_upstream() -> None:
    gate = asyncio.Event()
    check = RecordingCheck(gate=gate)
    up = Upstream(answer(["a" * 10] * 6))
    outcome = StreamOutcome()
    stream = moderate_stream(
        up.stream(), mode="holdback", holdback_chars=5, check=check, refusal="", outcome=outcome
    )
    assert await anext(stream) == up.chunks[0]
    pending = asyncio.ensure_future(anext(stream))
    await until(lambda: check.running > 0)
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await stream.aclose()
    assert up.closed and check.running == 0


def test_unknown_mode_fails_at_call() -> None:
    with pytest.raises(ValueError, match="mode"):
        moderate_stream(
            Upstream([]).stream(),
            mode="sometimes",  # type: ignore[arg-type]
            holdback_chars=1,
            check=RecordingCheck(),
            refusal="",
            outcome=StreamOutcome(),
        )


# ---------------------------------------------------------------- buffer and monitor


async def test_buffer_checks_once_and_releases_nothing_before() -> None:
    words = [f"w{i} " for i in range(40)]
    seen_at_release: list[int] = []

    def on_yield(client: Client, check: RecordingCheck) -> None:
        if b"w0" in client.raw:
            seen_at_release.append(len(check.passed))

    check = RecordingCheck()
    client, outcome, _ = await run(answer(words), check, mode="buffer", on_yield=on_yield)
    assert check.seen == ["".join(words)] and outcome.checks == 1
    assert seen_at_release and seen_at_release[0] == 1
    assert client.raw == b"".join(answer(words))


async def test_buffer_blocks_everything() -> None:
    client, outcome, _ = await run(answer(["ok ", TRIGGER]), RecordingCheck(), mode="buffer")
    assert outcome.blocked and client.refusal[0] == "Sorry, I can't help with that."
    assert client.content[0] == ""


async def test_monitor_never_waits_for_the_guard_and_records_verdicts() -> None:
    gate = asyncio.Event()
    check = RecordingCheck(gate=gate)
    words = ["safe ", f"{TRIGGER} ", "more text here ", "and the end"]
    up = Upstream(answer(words))
    outcome = StreamOutcome()
    stream = moderate_stream(
        up.stream(), mode="monitor", holdback_chars=10, check=check, refusal="x", outcome=outcome
    )
    raw = await _drain(stream)  # completes although the guard has not answered yet
    assert raw == b"".join(up.chunks) and up.closed
    assert not outcome.verdicts and outcome.background is not None
    gate.set()
    await outcome.settled()
    assert check.seen[-1] == "".join(words) and check.max_running == 1
    assert outcome.flagged and not outcome.blocked
    assert outcome.checks == len(outcome.verdicts) == len(check.seen)


async def test_monitor_upstream_drop_and_guard_error() -> None:
    check = RecordingCheck(fail=GuardTimeout("late"))
    client, outcome, _ = await run(
        [chunk("abc"), chunk("def"), b"data: {"], check, mode="monitor", holdback=2
    )
    assert client.content[0] == "abcdef"
    assert client.payloads[-1]["error"]["code"] == "upstream_error"
    assert isinstance(outcome.error, GuardTimeout) and check.seen[-1] == "abcdef"


# ---------------------------------------------------------------- the invariant


def random_answer(rng: random.Random) -> tuple[list[bytes], bool]:
    vocab = ["the ", "cat ", "sat ", "on ", "a ", "mat. ", "hé ", "数据 ", "\n", "ok, "]
    has_trigger = rng.random() < 0.4
    n_choices = rng.choice([1, 1, 2])
    events = [chunk(role="assistant", content="", index=i) for i in range(n_choices)]
    steps = rng.randint(1, 60)
    trigger_at = rng.randrange(steps) if has_trigger else -1
    for step in range(steps):
        index = rng.randrange(n_choices)
        word = TRIGGER + " " if step == trigger_at else rng.choice(vocab)
        if rng.random() < 0.15:
            events.append(chunk(tool=(0, "fn" if step == 0 else None, word), index=index))
        elif rng.random() < 0.1 and step != trigger_at:
            events.append(chunk(content="", index=index))  # empty delta
        else:
            events.append(chunk(word, index=index))
        if rng.random() < 0.05:
            events.append(b": keep-alive\n\n")
    events += [chunk(finish="stop", index=i) for i in range(n_choices)]
    if rng.random() < 0.5:
        events.append(USAGE)
    if rng.random() < 0.85:
        events.append(DONE)
    return events, has_trigger


@pytest.mark.parametrize("mode", ["holdback", "buffer"])
async def test_invariant_no_unchecked_character_reaches_the_client(mode: StreamMode) -> None:
    for seed in range(120):
        rng = random.Random(seed)
        events, has_trigger = random_answer(rng)
        up = Upstream(
            split(b"".join(events), rng, rng.choice([20, 100, 400])), rng=rng, max_yields=3
        )
        # A guard slower or faster than the upstream, so events arrive while checks run.
        check = RecordingCheck(rng=rng, max_yields=rng.choice([0, 4, 40]))
        holdback = rng.choice([1, 3, 10, 40, 400])

        def on_yield(client: Client, check: RecordingCheck) -> None:
            assert_covered(client, check)  # at every moment, not just at the end

        client, outcome, _ = await run(
            [], check, mode=mode, holdback=holdback, upstream=up, on_yield=on_yield
        )
        assert check.max_running <= 1
        assert up.closed, seed
        assert TRIGGER not in client.raw.decode(), seed
        assert outcome.blocked == has_trigger, seed
        if not has_trigger and DONE in events:
            got, expected = without_comments(client.raw), without_comments(b"".join(events))
            assert got[0] == expected[0] and len(got[1]) == len(expected[1]), seed
        if has_trigger:
            assert (
                client.raw.endswith(DONE)
                and client.payloads[-1]["choices"][0]["finish_reason"] == "content_filter"
            )


@pytest.mark.parametrize("mode", ["holdback", "monitor"])
async def test_upstream_error_event_is_forwarded_once(mode: StreamMode) -> None:
    upstream_error = encode_data(
        b'{"error": {"message": "Upstream timed out", "type": "upstream_error", '
        b'"param": null, "code": "upstream_timeout"}}'
    )
    chunks = [chunk("half an "), chunk("answer"), upstream_error]
    client, outcome, _ = await run(chunks, RecordingCheck(), mode=mode)
    assert client.raw == b"".join(chunks)  # the upstream's own error event, not a second one
    assert outcome.upstream_error == "upstream error event: Upstream timed out"
    assert not outcome.completed


async def test_upstream_left_open_after_done_does_not_hold_the_response() -> None:
    forever = asyncio.Event()
    closed: list[bool] = []

    async def upstream() -> AsyncGenerator[bytes, None]:
        try:
            yield chunk("done soon")
            yield DONE
            await forever.wait()  # a server that never closes the stream
            yield b"data: never\n\n"
        finally:
            closed.append(True)

    outcome = StreamOutcome()
    stream = moderate_stream(
        upstream(),
        mode="holdback",
        holdback_chars=400,
        check=RecordingCheck(),
        refusal="",
        outcome=outcome,
    )
    raw = await _drain(stream)  # ends after a short, bounded drain
    assert raw == chunk("done soon") + DONE and closed == [True] and outcome.completed


async def test_guard_error_after_some_text_was_released() -> None:
    class FailSecond(RecordingCheck):
        async def __call__(self, text: str) -> Verdict:
            if self.seen:
                self.seen.append(text)
                raise GuardTimeout("second check timed out")
            return await super().__call__(text)

    check = FailSecond()
    up = Upstream(answer(["0123456789"] * 5))
    client, outcome, _ = await run([], check, holdback=10, upstream=up)
    assert client.content[0] == "0123456789"  # the first window, checked and released
    assert client.payloads[-1]["error"]["code"] == "guard_unavailable"
    assert outcome.released_chars == 10 and up.closed and not client.done
    assert_covered(client, check)


async def test_monitor_client_disconnect_still_checks_what_was_sent() -> None:
    check = RecordingCheck()
    up = Upstream(answer(["one ", "two ", "three ", "four"]))
    outcome = StreamOutcome()
    stream = moderate_stream(
        up.stream(), mode="monitor", holdback_chars=400, check=check, refusal="", outcome=outcome
    )
    got = [await anext(stream) for _ in range(3)]  # role chunk, "one ", "two "
    await stream.aclose()
    await outcome.settled()
    assert up.closed and got == up.chunks[:3]
    assert check.seen == ["one two "] and outcome.released_chars == len("one two ")


async def test_keep_alive_goes_out_while_text_is_held() -> None:
    gate = asyncio.Event()
    check = RecordingCheck(gate=gate)
    up = Upstream([chunk("held text"), b": ping\n\n", chunk(finish="stop"), DONE])
    outcome = StreamOutcome()
    stream = moderate_stream(
        up.stream(), mode="buffer", holdback_chars=400, check=check, refusal="", outcome=outcome
    )
    assert await anext(stream) == b": ping\n\n"  # before the held text, the guard still busy
    assert not check.passed
    gate.set()
    assert await _drain(stream) == chunk("held text") + chunk(finish="stop") + DONE
