"""Hold-back and buffer: no streamed character reaches the client before a check passed it.

THE INVARIANT test drives many random streams (chunkings, choices, tool calls, keep-alives,
guard and upstream speeds) and checks, at every byte the client receives, that all its text is
inside a text the guard double passed.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from proxy.sse import DONE, encode_data
from proxy.streaming import StreamMode, StreamOutcome, moderate_stream
from tests.proxy.streaming_helpers import (
    TRIGGER,
    USAGE,
    Client,
    RecordingCheck,
    Upstream,
    answer,
    assert_covered,
    chunk,
    drain,
    run,
    split,
    until,
    without_comments,
)

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
    task = asyncio.create_task(drain(stream))
    await until(lambda: bool(check.seen))
    assert check.seen == ["short"]
    gate.set()
    raw = await task
    # The usage chunk and [DONE] come after the checked text, never before it.
    assert raw == b"".join(up.chunks)
    assert outcome.checks == 1


async def test_keep_alive_comments_and_crlf_framing_preserved() -> None:
    body = b"".join(answer(["one ", "two ", "three"])).replace(b"\n", b"\r\n")
    body = body.replace(b"data: [DONE]", b": ping\r\n\r\ndata: [DONE]")
    check = RecordingCheck()
    client, outcome, _ = await run(split(body, random.Random(3)), check, holdback=4)
    assert client.raw == body  # here the comment arrives after every text was checked
    assert check.seen[-1] == "one two three"
    assert outcome.completed


async def test_flagged_malformed_json_waits_for_the_text_before_it_and_is_recorded() -> None:
    bad = b"data: {not json\n\n"
    chunks = [chunk("hello "), bad, chunk("world"), chunk(finish="stop"), DONE]
    order: list[tuple[bytes, list[str]]] = []
    check = RecordingCheck()

    def on_yield(client: Client, check: RecordingCheck) -> None:
        order.append((client.raw, list(check.passed)))

    client, outcome, _ = await run(
        chunks, check, holdback=1000, on_yield=on_yield, on_uncheckable="flag"
    )
    assert client.raw == b"".join(chunks)
    for raw, passed in order:
        if bad in raw:
            assert passed  # released only after the text before it was checked
    assert outcome.completed and outcome.uncheckable == 1 and not outcome.blocked


@pytest.mark.parametrize("mode", ["holdback", "buffer"])
async def test_refused_malformed_json_ends_the_stream_like_a_block(mode: StreamMode) -> None:
    # Cut-off JSON that a lenient client might still show: nobody can check it.
    bad = b'data: {"choices":[{"index":0,"delta":{"content":"' + TRIGGER.encode() + b"\n\n"
    chunks = [chunk(role="assistant", content=""), chunk("hello "), bad, chunk("world"), DONE]
    check = RecordingCheck()
    client, outcome, up = await run(chunks, check, mode=mode, holdback=1)
    assert bad not in client.raw and TRIGGER not in client.raw.decode()
    assert "world" not in client.raw.decode()  # nothing after it either
    assert outcome.blocked and outcome.refused_uncheckable and outcome.uncheckable == 1
    assert client.payloads[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert client.done and up.closed
    assert_covered(client, check)


async def test_reasoning_deltas_are_held_and_checked_like_content() -> None:
    chunks = [
        chunk(role="assistant", content=""),
        chunk(reasoning=("reasoning_content", "Let me think. ")),
        chunk(reasoning=("reasoning", f"It is {TRIGGER}. ")),
        chunk("Answer."),
        chunk(finish="stop"),
        DONE,
    ]
    check = RecordingCheck()
    client, outcome, _ = await run(chunks, check, holdback=1)
    assert outcome.blocked
    assert TRIGGER not in client.raw.decode()
    assert client.reasoning.get(0, "") in ("", "Let me think. ")
    assert_covered(client, check)


async def test_reasoning_objects_and_content_parts_are_text() -> None:
    details = [{"type": "reasoning.text", "text": "thinking ", "signature": "c2ln"}]
    chunks = [
        chunk(reasoning=("reasoning_details", details)),
        chunk("hello ", parts=True),
        chunk(f"and {TRIGGER}", parts=True),
        chunk(finish="stop"),
        DONE,
    ]
    check = RecordingCheck()
    client, outcome, _ = await run(chunks, check, holdback=1000)
    assert check.seen == [f"thinking \n\nhello and {TRIGGER}"]  # no signature: not text
    assert outcome.blocked and TRIGGER not in client.raw.decode()


async def test_stripped_reasoning_is_neither_sent_nor_checked() -> None:
    chunks = [
        chunk(role="assistant", content=""),
        chunk(reasoning=("reasoning_content", f"secret {TRIGGER} plan ")),
        chunk(reasoning=("reasoning", {"text": "more thoughts"})),
        chunk("Fine answer."),
        chunk(finish="stop"),
        DONE,
    ]
    check = RecordingCheck()
    client, outcome, _ = await run(chunks, check, holdback=1, strip_reasoning=True)
    assert not outcome.blocked and outcome.completed
    assert check.seen[-1] == "Fine answer."
    assert client.reasoning == {} and b"reasoning" not in client.raw
    assert client.content[0] == "Fine answer."
    assert outcome.released_chars == len("Fine answer.")


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
        elif rng.random() < 0.15:  # reasoning is held back exactly like content
            field = rng.choice(["reasoning_content", "reasoning"])
            events.append(chunk(reasoning=(field, word), index=index))
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
        first_window = rng.choice([None, 1, 5])

        def on_yield(client: Client, check: RecordingCheck) -> None:
            assert_covered(client, check)  # at every moment, not just at the end

        client, outcome, _ = await run(
            [],
            check,
            mode=mode,
            holdback=holdback,
            upstream=up,
            on_yield=on_yield,
            first_window=first_window,
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


async def test_first_window_checks_the_first_text_at_once() -> None:
    """The first token waits for one check of itself, not for a whole window of text."""
    check = RecordingCheck()
    events = [chunk("Hello"), chunk(" there, this is a longer answer"), chunk(finish="stop"), DONE]
    client, outcome, _ = await run(events, check, holdback=400, first_window=1)
    assert check.passed[0] == "Hello"
    assert outcome.checks == 2  # the first text, then the whole answer at the end
    assert "".join(client.content.values()) == "Hello there, this is a longer answer"


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
    assert await drain(stream) == chunk("held text") + chunk(finish="stop") + DONE


async def test_content_parts_that_are_not_text_are_uncheckable() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "look "}, image]
    parts = encode_data(orjson.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}))
    chunks = [chunk("hello "), parts, chunk(finish="stop"), DONE]
    client, outcome, _ = await run(chunks, RecordingCheck(), holdback=1)
    assert outcome.refused_uncheckable and b"image_url" not in client.raw
    order: list[tuple[bytes, list[str]]] = []

    def on_yield(client: Client, check: RecordingCheck) -> None:
        order.append((client.raw, list(check.passed)))

    check = RecordingCheck()
    client, outcome, _ = await run(
        chunks, check, holdback=1000, on_uncheckable="flag", on_yield=on_yield
    )
    assert b"image_url" in client.raw and outcome.uncheckable == 1 and outcome.completed
    for raw, passed in order:  # its text part went out only after a check covering it
        if b"image_url" in raw:
            assert any("hello look " in text for text in passed)


async def test_audio_transcript_is_text() -> None:
    audio = {"id": "a", "transcript": f"say {TRIGGER}", "data": "AAAA"}
    events = [encode_data(orjson.dumps({"choices": [{"index": 0, "delta": {"audio": audio}}]}))]
    client, outcome, _ = await run([*events, chunk(finish="stop"), DONE], RecordingCheck())
    assert outcome.blocked and TRIGGER not in client.raw.decode()
