"""End to end: the official openai client -> real gateway -> real upstream double, sync and async.

Everything the client sends must reach the upstream and everything the upstream answers must
reach the client, streaming or not.
"""

from __future__ import annotations

import httpx
import openai
import orjson
from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.doubles.upstream import UpstreamDouble

PNG_1PX = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi there"}]


def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="sk-client", max_retries=0)


def test_plain_completion_passes_every_field_both_ways(
    gateway: str, double: UpstreamDouble
) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=USER,
        n=1,
        logprobs=True,
        response_format={"type": "json_object"},
        extra_body={"vendor_knob": {"deep": [1, 2.5, None]}},
        extra_headers={"x-double-echo": "1", "x-vendor-header": "v"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "double says: hi there"
    assert completion.usage is not None and completion.usage.total_tokens == 12
    # Unknown response fields and headers reach the client.
    assert completion.model_extra is not None
    assert completion.model_extra["x_double"] == {"vendor": True}
    assert raw.headers["x-double-served"] == "1"
    assert raw.headers["x-request-id"] == "req_double"
    assert raw.headers["x-guardline-route"] == "default"
    assert raw.headers["x-guardline-request-id"]
    # Unknown request fields and headers reach the upstream.
    echo = completion.model_extra["echo"]
    assert echo["body"]["vendor_knob"] == {"deep": [1, 2.5, None]}
    assert echo["body"]["response_format"] == {"type": "json_object"}
    assert echo["body"]["logprobs"] is True
    assert echo["headers"]["x-vendor-header"] == "v"
    assert double.last().path == "/v1/chat/completions"


def test_original_request_bytes_are_forwarded_unchanged(
    gateway: str, double: UpstreamDouble
) -> None:
    # Odd spacing, key order and number formatting must survive: nothing re-encodes the body.
    body = b'{ "messages":[{"content":"hi","role":"user"}],\n "model" : "m", "temperature":1.50 }'
    response = httpx.post(
        gateway + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer k"},
    )
    assert response.status_code == 200
    assert double.last().body == body


def test_upstream_response_bytes_are_relayed_unchanged(gateway: str, double_url: str) -> None:
    body = orjson.dumps({"model": "m", "messages": USER, "stream": True})
    headers = {"content-type": "application/json", "x-double-chunks": "4"}
    direct = httpx.post(double_url + "/chat/completions", content=body, headers=headers)
    proxied = httpx.post(gateway + "/v1/chat/completions", content=body, headers=headers)
    assert proxied.status_code == 200
    assert proxied.headers["content-type"] == direct.headers["content-type"]

    def strip_created(data: bytes) -> bytes:  # the only field that depends on the clock
        import re

        return re.sub(rb'"created":\d+', b'"created":0', data)

    assert strip_created(proxied.content) == strip_created(direct.content)


def test_streaming_with_usage(gateway: str) -> None:
    stream = client(gateway).chat.completions.create(
        model="gpt-test",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-double-chunks": "5"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "word0 word1 word2 word3 word4 "
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_tool_calls_plain_and_streamed(gateway: str) -> None:
    tools: list[ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    c = client(gateway)
    headers = {"x-double-tool-calls": "1", "x-double-echo": "1"}
    completion = c.chat.completions.create(
        model="m",
        messages=USER,
        tools=tools,
        extra_headers=headers,
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    call = calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.model_extra is not None
    assert completion.model_extra["echo"]["body"]["tools"] == tools

    stream = c.chat.completions.create(
        model="m",
        messages=USER,
        tools=tools,
        stream=True,
        extra_headers=headers,
    )
    args = ""
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                args += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert orjson.loads(args) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_image_parts_reach_the_upstream(gateway: str) -> None:
    content: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": PNG_1PX, "detail": "low"}},
    ]
    completion = client(gateway).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": content}],
        extra_headers={"x-double-echo": "1"},
    )
    assert completion.model_extra is not None
    assert completion.model_extra["echo"]["body"]["messages"][0]["content"] == content
    assert completion.choices[0].message.content == "double says: what is this <image_url>"


async def test_async_client_plain_and_stream(gateway: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway + "/v1", api_key="sk-client", max_retries=0
    ) as c:
        completion = await c.chat.completions.create(model="m", messages=USER)
        assert completion.choices[0].message.content == "double says: hi there"
        stream = await c.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == (
            "word0 word1 word2 "
        )
        assert chunks[-1].usage is not None


def test_health_and_readiness(gateway: str) -> None:
    assert httpx.get(gateway + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["upstreams"] == {"double": "openai"}
