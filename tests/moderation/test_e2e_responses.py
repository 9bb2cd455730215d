"""`POST /v1/responses` end to end: the official openai client's `responses.create` and
`responses.stream` (sync and async) through the moderated gateway to the upstream double's
Responses API, judged by the guard double."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.doubles.sglang_server import SGLangDouble
from tests.moderation.conftest import Gateway

HARMFUL = "how to build a bomb"
REFUSAL = "[refused by policy]"


def _answers(guard: SGLangDouble) -> list[str]:
    """The answers the guard judged (output checks), in order."""
    out = []
    for body in guard.requests:
        part = body["messages"][-1]["content"][-1]["text"]
        if "### Answer: " in part:
            out.append(part.split("### Answer: ", 1)[1])
    return out


def _prompts(guard: SGLangDouble) -> list[str]:
    return [body["messages"][-1]["content"][-1]["text"] for body in guard.requests]


# --- normal answers -------------------------------------------------------------------------


def test_create_returns_the_upstream_answer_checked(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    raw = gateway.client().responses.with_raw_response.create(model="m", input="Hello there")
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text == "double says: Hello there"
    assert response.usage is not None and response.usage.total_tokens == 12
    assert raw.headers["x-guardline-input"] == "safe"
    assert raw.headers["x-guardline-output"] == "safe"
    assert raw.headers["x-guardline-route"] == "default"
    assert any("Hello there" in p for p in _prompts(guard))
    assert _answers(guard) == ["double says: Hello there"]


def test_stream_true_keeps_the_event_framing(gateway: Gateway) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50})
    stream = gateway.client().responses.create(
        model="m", input="Hello", stream=True, extra_headers={"x-double-chunks": "6"}
    )
    types = []
    text = ""
    for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == "".join(f"word{i} " for i in range(6))
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_responses_stream_helper_gets_the_final_response(gateway: Gateway) -> None:
    gateway.start()
    with gateway.client().responses.stream(
        model="m", input="Hello", extra_headers={"x-double-chunks": "4"}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "word0 word1 word2 word3 "
    assert final.output_text == "word0 word1 word2 word3 "
    assert final.status == "completed"


def test_async_create_and_stream(gateway: Gateway) -> None:
    gateway.start()

    async def run() -> tuple[str, str]:
        client = gateway.async_client()
        response = await client.responses.create(model="m", input="Hi")
        async with client.responses.stream(
            model="m", input="Hi", extra_headers={"x-double-chunks": "3"}
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        await client.close()
        return response.output_text, final.output_text

    plain, streamed = asyncio.run(run())
    assert plain == "double says: Hi"
    assert streamed == "word0 word1 word2 "


def test_previous_response_id_and_store_are_forwarded_unchanged(
    gateway: Gateway, double: Any
) -> None:
    gateway.start()
    gateway.client().responses.create(
        model="m", input="Hi again", previous_response_id="resp_earlier", store=False
    )
    sent = double.last()
    assert sent.path == "/v1/responses"
    assert sent.json()["previous_response_id"] == "resp_earlier"
    assert sent.json()["store"] is False


# --- input --------------------------------------------------------------------------------


def test_input_block_is_a_400_content_policy_violation(gateway: Gateway, double: Any) -> None:
    gateway.start()
    before = len(double.received)
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(model="m", input=HARMFUL)
    assert info.value.code == "content_policy_violation"
    assert info.value.response.headers["x-guardline-input"] == "unsafe"
    assert len(double.received) == before  # never forwarded


def test_input_block_in_a_stream_is_a_400_too(gateway: Gateway) -> None:
    gateway.start()
    client = gateway.client()
    with (
        pytest.raises(openai.BadRequestError) as info,
        client.responses.stream(model="m", input=HARMFUL) as stream,
    ):
        for _ in stream:
            pass
    assert info.value.code == "content_policy_violation"


def test_input_block_as_refusal_is_a_completed_response(gateway: Gateway) -> None:
    gateway.start(on_block={"input": "refusal", "refusal": REFUSAL})
    response = gateway.client().responses.create(model="m", input=HARMFUL)
    assert response.status == "completed"
    assert response.output_text == REFUSAL
    with gateway.client().responses.stream(model="m", input=HARMFUL) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REFUSAL and final.output_text == REFUSAL


def test_every_user_item_after_the_last_assistant_item_is_judged(gateway: Gateway) -> None:
    gateway.start()
    items: Any = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "input_text", "text": HARMFUL}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(model="m", input=items)
    assert info.value.code == "content_policy_violation"


def test_instructions_are_judged_only_with_include_system(gateway: Gateway) -> None:
    gateway.start()
    client = gateway.client()
    response = client.responses.create(model="m", instructions=HARMFUL, input="Hi")
    assert response.status == "completed"
    gateway.start(input={"include_system": True})
    with pytest.raises(openai.BadRequestError):
        gateway.client().responses.create(model="m", instructions=HARMFUL, input="Hi")


def test_tool_results_are_judged_when_the_policy_says_so(gateway: Gateway) -> None:
    items: Any = [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": HARMFUL},
    ]
    gateway.start()
    assert gateway.client().responses.create(model="m", input=items).status == "completed"
    gateway.start(input={"include_tool_results": True})
    with pytest.raises(openai.BadRequestError):
        gateway.client().responses.create(model="m", input=items)


def test_input_file_is_refused_as_uncheckable(gateway: Gateway) -> None:
    gateway.start()
    items: Any = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "summarise"},
                {"type": "input_file", "file_id": "file-123"},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(model="m", input=items)
    assert info.value.code == "unsupported_content"
    assert info.value.param == "input[0].content[1]"


def test_input_file_is_forwarded_flagged_when_the_policy_flags(gateway: Gateway) -> None:
    gateway.start(input={"on_uncheckable": "flag"})
    items: Any = [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]
    raw = gateway.client().responses.with_raw_response.create(model="m", input=items)
    assert raw.headers["x-guardline-unchecked"] == "input[0].content[0]"


def test_a_bad_image_is_a_400_naming_the_part(gateway: Gateway) -> None:
    gateway.start()
    items: Any = [
        {
            "role": "user",
            "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(model="m", input=items)
    assert info.value.code == "invalid_image"
    assert info.value.param == "input[0].content[0]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": 3, "input": "x"}, "model"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": ["x"]}, "input[0]"),
        ({"model": "m", "input": [{"role": "User", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "x", "instructions": 1}, "instructions"),
        ({"model": "m", "input": "x", "background": True}, "background"),
    ],
)
def test_bad_bodies_get_an_openai_error(gateway: Gateway, body: Any, param: str) -> None:
    gateway.start()
    response = httpx.post(
        f"{gateway.url}/v1/responses", json=body, headers={"authorization": "Bearer k"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_a_400(gateway: Gateway) -> None:
    gateway.start()
    response = httpx.post(
        f"{gateway.url}/v1/responses", content=b"{", headers={"authorization": "Bearer k"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


# --- output -------------------------------------------------------------------------------


def test_output_block_ends_incomplete_with_content_filter(gateway: Gateway) -> None:
    gateway.start(input={"enabled": False}, on_block={"refusal": REFUSAL})
    raw = gateway.client().responses.with_raw_response.create(model="m", input=HARMFUL)
    response = raw.parse()
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "content_filter"
    assert response.output_text == REFUSAL
    assert HARMFUL not in orjson.dumps(response.model_dump()).decode()
    assert raw.headers["x-guardline-output"] == "unsafe"


def test_function_call_arguments_are_checked(gateway: Gateway, guard: SGLangDouble) -> None:
    guard.configure(unsafe_words={"Paris": "Threat"})  # the double's call says Paris
    gateway.start()
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {}}]
    client = gateway.client()
    headers = {"x-double-tool-calls": "1"}
    response = client.responses.create(model="m", input="Hi", tools=tools, extra_headers=headers)
    assert response.status == "incomplete"
    assert all(item.type != "function_call" for item in response.output)
    assert any("get_weather(" in a and "Paris" in a for a in _answers(guard))
    stream = client.responses.create(
        model="m", input="Hi", tools=tools, stream=True, extra_headers=headers
    )
    events = list(stream)
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert "Paris" not in args  # what was released had been judged without it
    assert events[-1].type == "response.incomplete"
    assert "Paris" not in orjson.dumps([e.model_dump() for e in events]).decode()


def test_safe_function_call_streams_its_arguments(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {}}]
    with gateway.client().responses.stream(
        model="m", input="Hi", tools=tools, extra_headers={"x-double-tool-calls": "1"}
    ) as stream:
        args = "".join(
            e.delta for e in stream if e.type == "response.function_call_arguments.delta"
        )
        final = stream.get_final_response()
    assert args == '{"city": "Paris"}'
    assert final.output[0].type == "function_call"
    assert _answers(guard)[-1] == 'get_weather({"city": "Paris"})'


def _stream_events(gateway: Gateway, chunks: int, **headers: str) -> list[Any]:
    stream = gateway.client().responses.create(
        model="m",
        input="Hello",
        stream=True,
        extra_headers={"x-double-chunks": str(chunks), **headers},
    )
    return list(stream)


def test_stream_output_block_ends_with_response_incomplete(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    gateway.start(
        output={"stream": "holdback", "holdback_chars": 50}, on_block={"refusal": REFUSAL}
    )
    events = _stream_events(gateway, 40)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "word12" not in text
    assert text.endswith(REFUSAL)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "content_filter"
    assert last.response.output_text == REFUSAL
    assert not [e for e in events if e.type == "response.completed"]


def test_holdback_never_releases_unchecked_response_text(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50}, on_block={"refusal": "[x]"})
    released = ""
    for event in _stream_events(gateway, 40):
        if event.type != "response.output_text.delta" or event.delta == "[x]":
            continue
        released += event.delta
        # When this delta arrived, a check covering all text released so far had passed.
        judged_safe = [a for a in _answers(guard) if "word12" not in a]
        assert any(answer.startswith(released) for answer in judged_safe), released
    assert released.startswith("word0 ") and "word12" not in released


def test_text_only_in_the_final_events_is_checked_before_release(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    gateway.start(input={"enabled": False}, on_block={"refusal": REFUSAL})
    reply = "sure%2C%20here%20is%20how%20to%20build%20a%20bomb"
    events = _stream_events(gateway, 3, **{"x-double-final-only": "1", "x-double-reply": reply})
    dumped = orjson.dumps([e.model_dump() for e in events]).decode()
    assert "bomb" not in dumped
    assert events[-1].type == "response.incomplete"


def test_reasoning_summary_is_checked_or_stripped(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(input={"enabled": False})
    headers = {"x-double-reasoning": "thinking about a bomb"}
    response = gateway.client().responses.create(model="m", input="Hi", extra_headers=headers)
    assert response.status == "incomplete"
    events = _stream_events(gateway, 3, **headers)
    assert events[-1].type == "response.incomplete"
    assert "bomb" not in orjson.dumps([e.model_dump() for e in events]).decode()

    gateway.start(input={"enabled": False}, output={"reasoning": "strip"})
    response = gateway.client().responses.create(model="m", input="Hi", extra_headers=headers)
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["message"]
    events = _stream_events(gateway, 3, **headers)
    assert events[-1].type == "response.completed"
    assert all("reasoning" not in e.type for e in events)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.output_index for e in added] == [0]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "word0 word1 word2 "
    )


def test_buffer_and_monitor_modes(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(input={"enabled": False}, output={"stream": "buffer"})
    events = _stream_events(gateway, 8)
    assert events[-1].type == "response.completed" and len(guard.requests) == 1
    gateway.start(output={"stream": "monitor", "holdback_chars": 50})
    events = _stream_events(gateway, 20)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "word12" in text and events[-1].type == "response.completed"


def test_upstream_errors_pass_through(gateway: Gateway) -> None:
    gateway.start()
    with pytest.raises(openai.RateLimitError):
        gateway.client().responses.create(
            model="m", input="Hi", extra_headers={"x-double-status": "429"}
        )


# --- the same machinery as chat -----------------------------------------------------------


def test_closed_guard_failure_is_503_and_not_forwarded(
    gateway: Gateway, guard: SGLangDouble, double: Any
) -> None:
    guard.configure(status=503)
    gateway.start(on_guard_error="closed")
    before = len(double.received)
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().responses.create(model="m", input="Hello")
    assert caught.value.status_code == 503 and caught.value.code == "guard_unavailable"
    assert len(double.received) == before


def test_parallel_unsafe_input_cancels_the_upstream(
    gateway: Gateway, guard: SGLangDouble, double: Any
) -> None:
    guard.configure(delay_ms=100)
    gateway.start(input={"parallel": True})
    for stream in (False, True):
        request_id = f"responses-parallel-{stream}"
        with pytest.raises(openai.BadRequestError):
            gateway.client().responses.create(
                model="m",
                input=f"build a bomb ({stream})",
                stream=stream,
                extra_headers={"x-double-delay-ms": "3000", "x-double-id": request_id},
            )
        assert double.wait_disconnect(request_id, timeout=5)


def test_verdicts_are_cached_like_chat(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(output={"enabled": False})
    client = gateway.client()
    client.responses.create(model="m", input="Same question")
    client.responses.create(model="m", input="Same question")
    assert sum("Same question" in p for p in _prompts(guard)) == 1


def test_without_moderation_the_body_is_relayed(gateway: Gateway, double: Any) -> None:
    gateway.start(input={"enabled": False}, output={"enabled": False})
    raw = gateway.client().responses.with_raw_response.create(model="m", input=HARMFUL)
    assert raw.parse().output_text == f"double says: {HARMFUL}"
    assert raw.headers["x-guardline-input"] == "skipped"
    assert double.last().path == "/v1/responses"


def test_guard_failure_mid_stream_ends_it_with_an_error_event(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    guard.configure(status=503)
    gateway.start(input={"enabled": False}, on_guard_error="closed")
    deltas: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for event in gateway.client().responses.create(model="m", input="Hi", stream=True):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert "could not be moderated" in caught.value.message
    assert deltas == []


def test_an_upstream_stream_that_breaks_ends_with_an_error(gateway: Gateway) -> None:
    gateway.start()
    deltas: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        stream = gateway.client().responses.create(
            model="m", input="Hi", stream=True, extra_headers={"x-double-die-after": "5"}
        )
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    assert "unreachable" in caught.value.message  # the relay's error event, passed on
    assert "".join(deltas) in ("", "word0 ")


def test_a_prefixed_route_serves_responses_with_its_own_policy(gateway: Gateway) -> None:
    gateway.policy("strict", input={"include_system": True})
    gateway.policy("main")
    gateway.start(
        routes=[
            {"name": "kids", "path_prefix": "/kids", "upstream": "double", "policy": "strict.yaml"},
            {"name": "default", "upstream": "double", "policy": "main.yaml"},
        ]
    )
    ok = gateway.client().responses.create(model="m", instructions=HARMFUL, input="Hi")
    assert ok.status == "completed"
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client(prefix="/kids").responses.create(model="m", instructions=HARMFUL, input="Hi")
    assert info.value.response.headers["x-guardline-policy"].startswith("strict@")


def test_stream_headers_name_the_stream_mode(gateway: Gateway) -> None:
    gateway.start()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={"model": "m", "input": "Hello", "stream": True},
        headers={"authorization": "Bearer sk-test"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-guardline-input"] == "safe"
        assert response.headers["x-guardline-output"] == "holdback"
        lines = list(response.iter_lines())
    assert lines[0] == "event: response.created"
    assert lines[-2] == "event: response.completed" or lines[-3] == "event: response.completed"


def test_an_input_item_of_an_unknown_type_is_uncheckable(gateway: Gateway) -> None:
    gateway.start()
    items: Any = [{"type": "input_text", "text": HARMFUL}]
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().responses.create(model="m", input=items)
    assert info.value.code == "unsupported_content" and info.value.param == "input[0]"
