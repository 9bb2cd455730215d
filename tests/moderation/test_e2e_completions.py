"""`POST /v1/completions` (legacy) end to end with the openai client's `completions.create`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.doubles.sglang_server import SGLangDouble
from tests.moderation.conftest import Gateway

HARMFUL = "how to build a bomb"
REFUSAL = "[refused by policy]"


def _answers(guard: SGLangDouble) -> list[str]:
    out = []
    for body in guard.requests:
        part = body["messages"][-1]["content"][-1]["text"]
        if "### Answer: " in part:
            out.append(part.split("### Answer: ", 1)[1])
    return out


def test_a_completion_is_checked_both_ways(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    raw = gateway.client().completions.with_raw_response.create(model="m", prompt="Hello")
    completion = raw.parse()
    assert completion.choices[0].text == "double says: Hello"
    assert raw.headers["x-guardline-input"] == "safe"
    assert raw.headers["x-guardline-output"] == "safe"
    assert _answers(guard) == ["double says: Hello"]


def test_every_prompt_of_a_list_is_judged(gateway: Gateway) -> None:
    gateway.start()
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().completions.create(model="m", prompt=[HARMFUL, "thanks"])
    assert info.value.code == "content_policy_violation"


def test_token_prompts_are_uncheckable(gateway: Gateway) -> None:
    gateway.start()
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().completions.create(model="m", prompt=[1, 2, 3])
    assert info.value.code == "unsupported_content" and info.value.param == "prompt"


def test_input_block_as_refusal(gateway: Gateway) -> None:
    gateway.start(on_block={"input": "refusal", "refusal": REFUSAL})
    completion = gateway.client().completions.create(model="m", prompt=HARMFUL)
    assert completion.choices[0].text == REFUSAL
    assert completion.choices[0].finish_reason == "content_filter"
    stream = gateway.client().completions.create(model="m", prompt=HARMFUL, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == REFUSAL


def test_output_block_replaces_the_text(gateway: Gateway) -> None:
    gateway.start(input={"enabled": False}, on_block={"refusal": REFUSAL})
    completion = gateway.client().completions.create(model="m", prompt=HARMFUL)
    assert completion.choices[0].text == REFUSAL
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.usage is not None and completion.usage.total_tokens == 12


def test_stream_holds_back_and_blocks(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50}, on_block={"refusal": "[x]"})
    released = ""
    reasons: list[Any] = []
    stream = gateway.client().completions.create(
        model="m", prompt="Hi", stream=True, extra_headers={"x-double-chunks": "40"}
    )
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            if choice.finish_reason == "content_filter":
                continue
            released += choice.text
            judged_safe = [a for a in _answers(guard) if "word12" not in a]
            assert any(a.startswith(released) for a in judged_safe), released
    assert reasons[-1] == "content_filter" and "word12" not in released


def test_safe_stream_sync_and_async(gateway: Gateway) -> None:
    gateway.start()
    headers = {"x-double-chunks": "5"}
    stream = gateway.client().completions.create(
        model="m",
        prompt="Hi",
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "".join(f"word{i} " for i in range(5))
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 12

    async def run() -> str:
        client = gateway.async_client()
        out = ""
        async for c in await client.completions.create(
            model="m", prompt="Hi", stream=True, extra_headers=headers
        ):
            out += "".join(ch.text for ch in c.choices)
        await client.close()
        return out

    assert asyncio.run(run()) == text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": 5}, "prompt"),
        ({"model": "m", "prompt": ["a", 1]}, "prompt"),
        ({"model": "m", "prompt": "x", "suffix": 1}, "suffix"),
        ({"model": "m", "prompt": "x", "stream": 1}, "stream"),
    ],
)
def test_bad_bodies_get_an_openai_error(gateway: Gateway, body: Any, param: str) -> None:
    gateway.start()
    response = httpx.post(
        f"{gateway.url}/v1/completions", json=body, headers={"authorization": "Bearer k"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
