"""The Responses and legacy completions adapters' pure parts: reading requests as chat
messages (with their params), reading answers' text, and the blocks they write."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.apis.body import param_namer
from proxy.apis.completions import COMPLETIONS, parse_completions_body
from proxy.apis.responses import RESPONSES, parse_responses_body
from proxy.errors import InvalidField


def _body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", **fields})


def test_string_input_and_instructions() -> None:
    body = parse_responses_body(_body(input="hi", instructions="be nice", stream=True))
    assert body.messages == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
    ]
    assert body.stream and body.model == "m"
    assert body.raw == _body(input="hi", instructions="be nice", stream=True)  # bytes kept


def test_items_become_chat_messages_with_their_params() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"type": "item_reference", "id": "msg_1"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "result"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,xx"},
                {"type": "input_file", "file_id": "file-1"},
            ],
        },
    ]
    body = parse_responses_body(_body(input=items))
    roles = [m["role"] for m in body.messages]
    assert roles == ["user", "assistant", "tool", "user"]
    assert body.messages[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert body.messages[3]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,xx"},
    }
    rename = param_namer(body)
    assert rename is not None
    assert rename("messages[3].content[1]") == "input[4].content[1]"
    assert rename("messages[2].content") == "input[3].output"
    assert rename("messages[0]") == "input[0]"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
        ({"input": [{"type": 1}]}, "input[0].type"),
        ({"input": "x", "background": True}, "background"),
    ],
)
def test_bad_requests_name_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidField) as info:
        parse_responses_body(_body(**fields))
    assert info.value.param == param


def test_output_text_of_a_response() -> None:
    response = {
        "output": [
            {
                "type": "reasoning",
                "id": "r",
                "summary": [{"type": "summary_text", "text": "think"}],
            },
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "hello"},
                    {"type": "refusal", "refusal": "no"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": '{"a": 1}'},
            {"type": "web_search_call", "id": "w"},
        ]
    }
    assert RESPONSES.output_text(response) == 'think\n\nhello\n\nno\n\nf({"a": 1})'
    assert RESPONSES.uncheckable_output(response) == []
    assert RESPONSES.uncheckable_output(
        {"output": [{"type": "image_generation_call", "result": "AAAA"}]}
    ) == ["output[0]"]


def test_redacted_response_is_incomplete_with_only_the_refusal() -> None:
    response = {
        "id": "resp_1",
        "status": "completed",
        "output": [{"type": "function_call", "name": "f", "arguments": "{}"}],
        "usage": {"total_tokens": 3},
    }
    out = orjson.loads(RESPONSES.redact(response, "sorry"))
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "content_filter"}
    assert [i["type"] for i in out["output"]] == ["message"]
    assert out["output"][0]["content"][0]["text"] == "sorry"
    assert out["usage"] == {"total_tokens": 3}


def test_strip_reasoning_removes_reasoning_items() -> None:
    response = {"output": [{"type": "reasoning"}, {"type": "message", "content": []}]}
    assert RESPONSES.strip_reasoning(response)
    assert response["output"] == [{"type": "message", "content": []}]
    assert not RESPONSES.strip_reasoning(response)


def test_completions_prompts() -> None:
    body = parse_completions_body(_body(prompt=["a", "b"], suffix="c"))
    assert [m["content"] for m in body.messages] == ["a", "b", "c"]
    rename = param_namer(body)
    assert rename is not None and rename("messages[1].content") == "prompt[1]"
    tokens = parse_completions_body(_body(prompt=[[1, 2], [3]]))
    assert not isinstance(tokens.messages[0]["content"], (str, list))  # uncheckable
    assert COMPLETIONS.output_text({"choices": [{"text": "x"}, {"text": "y"}]}) == "x\n\ny"
    out = orjson.loads(COMPLETIONS.redact({"choices": [{"text": "x", "logprobs": {}}]}, "no"))
    assert out["choices"] == [{"text": "no", "logprobs": None, "finish_reason": "content_filter"}]
