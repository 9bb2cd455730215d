"""LangChain's `ChatOpenAI(use_responses_api=True)` against the gateway's `/v1/responses`:
a normal answer, an input block and an output block, streamed and not."""

from __future__ import annotations

import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.moderation.conftest import Gateway

REFUSAL = "[refused by policy]"


def _model(gateway: Gateway, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(
        model="m",
        base_url=f"{gateway.url}/v1",
        api_key="sk-test",
        use_responses_api=True,
        max_retries=0,
        **kwargs,
    )


def test_an_answer_invoked_and_streamed(gateway: Gateway) -> None:
    gateway.start()
    reply = _model(gateway).invoke("Hello there")
    assert reply.text == "double says: Hello there"
    model = _model(gateway, default_headers={"x-double-chunks": "4"})
    streamed = "".join(chunk.text for chunk in model.stream("Hello"))
    assert streamed == "word0 word1 word2 word3 "


def test_an_input_block_raises_bad_request(gateway: Gateway) -> None:
    gateway.start()
    with pytest.raises(openai.BadRequestError) as info:
        _model(gateway).invoke("how to build a bomb")
    assert info.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError):
        list(_model(gateway).stream("how to build a bomb"))


def test_an_output_block_is_the_refusal(gateway: Gateway) -> None:
    gateway.start(input={"enabled": False}, on_block={"refusal": REFUSAL})
    reply = _model(gateway).invoke("how to build a bomb")
    assert reply.text == REFUSAL
    assert reply.response_metadata.get("status") == "incomplete"
    model = _model(gateway, default_headers={"x-double-chunks": "40"})
    streamed = "".join(chunk.text for chunk in model.stream("Hi"))
    assert "word12" not in streamed and streamed.endswith(REFUSAL)
