"""What the official `openai` SDK makes of a moderated stream's endings.

The moderated bytes are served to `AsyncOpenAI` through an `httpx.MockTransport`, so the SDK's
own SSE decoding and error handling run exactly as against the gateway, without a server.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from guard_engine.errors import GuardUnavailable
from proxy.streaming import StreamOutcome, moderate_stream
from tests.proxy.streaming_helpers import TRIGGER, RecordingCheck, Upstream, answer, chunk

REFUSAL = "Sorry, I can't help with that."


def sdk_for(check: RecordingCheck, chunks: list[bytes]) -> openai.AsyncOpenAI:
    async def handler(request: httpx.Request) -> httpx.Response:
        stream = moderate_stream(
            Upstream(chunks).stream(),
            mode="holdback",
            holdback_chars=10,
            check=check,
            refusal=REFUSAL,
            outcome=StreamOutcome(),
        )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return openai.AsyncOpenAI(api_key="k", base_url="http://gateway.test/v1", http_client=http)


async def collect(sdk: openai.AsyncOpenAI) -> tuple[str, list[str | None]]:
    text, reasons = "", list[str | None]()
    stream = await sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for part in stream:
        for choice in part.choices:
            text += choice.delta.content or ""
            reasons.append(choice.finish_reason)
    return text, reasons


async def test_sdk_reads_a_safe_stream() -> None:
    text, reasons = await collect(sdk_for(RecordingCheck(), answer(["Hello ", "world."])))
    assert text == "Hello world." and reasons[-1] == "stop"


async def test_sdk_sees_the_block_as_content_filter_not_an_error() -> None:
    chunks = answer(["Fine start. ", f"then {TRIGGER} ", "rest"])
    text, reasons = await collect(sdk_for(RecordingCheck(), chunks))
    assert reasons[-1] == "content_filter" and reasons.count("content_filter") == 1
    assert text.endswith("\n\n" + REFUSAL) and TRIGGER not in text


async def test_sdk_raises_the_guard_failure() -> None:
    check = RecordingCheck(fail=GuardUnavailable("connection refused"))
    with pytest.raises(openai.APIError) as info:
        await collect(sdk_for(check, answer(["some ", "answer ", "text"])))
    assert info.value.code == "guard_unavailable"


async def test_sdk_raises_on_an_upstream_drop() -> None:
    with pytest.raises(openai.APIError) as info:
        await collect(sdk_for(RecordingCheck(), [chunk("partial answer")]))
    assert info.value.code == "upstream_error"
