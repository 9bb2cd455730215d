"""End to end: a client that goes away cancels the upstream request at once.

The upstream double records the disconnect it observes; the waits below are bounded so a
regression fails instead of hanging, they do not measure anything.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.doubles.upstream import UpstreamDouble

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def test_disconnect_mid_stream_reaches_the_upstream(gateway: str, double: UpstreamDouble) -> None:
    c = openai.OpenAI(base_url=gateway + "/v1", api_key="k", max_retries=0)
    stream = c.chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        extra_headers={
            "x-double-id": "stream-dc",
            "x-double-chunks": "1000",
            "x-double-chunk-delay-ms": "50",
        },
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()
    assert double.wait_disconnect("stream-dc")


async def test_disconnect_while_waiting_for_a_completion(
    gateway: str, double: UpstreamDouble
) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(
                gateway + "/v1/chat/completions",
                json={"model": "m", "messages": USER},
                headers={"x-double-id": "wait-dc", "x-double-delay-ms": "30000"},
            )
    assert double.wait_disconnect("wait-dc")


async def test_async_stream_cancelled_by_the_client(gateway: str, double: UpstreamDouble) -> None:
    async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="k", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            extra_headers={
                "x-double-id": "async-dc",
                "x-double-chunks": "1000",
                "x-double-chunk-delay-ms": "50",
            },
        )
        seen = 0
        async for _chunk in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()
    assert double.wait_disconnect("async-dc")
