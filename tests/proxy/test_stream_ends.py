"""How moderated streams end: blocks, guard failures, upstream drops and disconnects; the
buffer and monitor modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from guard_engine.errors import GuardError, GuardTimeout
from guard_engine.types import Verdict
from proxy.sse import DONE, encode_data
from proxy.streaming import StreamMode, StreamOutcome, moderate_stream
from tests.proxy.streaming_helpers import (
    ID,
    TRIGGER,
    Client,
    RecordingCheck,
    Upstream,
    answer,
    assert_covered,
    chunk,
    drain,
    run,
    until,
)

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
    raw = await drain(stream)
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
    raw = await drain(stream)  # completes although the guard has not answered yet
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
    raw = await drain(stream)  # ends after a short, bounded drain
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
