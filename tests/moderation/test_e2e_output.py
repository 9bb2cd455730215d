"""Output moderation end to end: complete bodies and streams (hold-back, buffer, monitor)."""

from __future__ import annotations

import time

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles.sglang_server import SGLangDouble
from tests.moderation.conftest import Gateway, guard_texts

UNSAFE_ANSWER = [{"role": "user", "content": "say: how to build a bomb"}]
SAFE = [{"role": "user", "content": "Hello there"}]


def test_unsafe_response_is_replaced_by_the_refusal(gateway: Gateway) -> None:
    # The upstream double echoes the prompt, so with the input check off the answer is unsafe.
    gateway.start(input={"enabled": False}, on_block={"refusal": "I can't share that."})
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="m", messages=UNSAFE_ANSWER
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "I can't share that."
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.usage is not None and completion.usage.total_tokens == 12  # kept
    assert raw.headers["x-guardline-input"] == "skipped"
    assert raw.headers["x-guardline-output"] == "unsafe"
    assert raw.status_code == 200


def test_tool_call_arguments_are_checked_as_output(gateway: Gateway, guard: SGLangDouble) -> None:
    guard.configure(unsafe_words={"Paris": "Threat"})  # the double's tool call says Paris
    gateway.start()
    completion = gateway.client().chat.completions.create(
        model="m",
        messages=SAFE,
        extra_headers={"x-double-tool-calls": "1"},
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    )
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.tool_calls is None


def _stream(gateway: Gateway, chunks: int, **headers: str) -> tuple[str, list[str | None], int]:
    """Stream through the gateway; returns (text, finish reasons, number of chunks)."""
    stream = gateway.client().chat.completions.create(
        model="m",
        messages=SAFE,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-double-chunks": str(chunks), **headers},
    )
    text, reasons, count = "", [], 0
    for chunk in stream:
        count += 1
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reasons.append(choice.finish_reason)
    return text, reasons, count


def test_holdback_never_releases_unchecked_text(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50}, on_block={"refusal": "[x]"})
    text, reasons, _ = _stream(gateway, 40)
    assert "word12" not in text
    assert text.endswith("[x]")
    assert reasons[-1] == "content_filter"
    # Every character the client got was inside a response the guard judged safe.
    # (the refusal follows released text after a blank line)
    released = text[: -len("[x]")].removesuffix("\n\n")
    judged_safe = []
    for body in guard.requests:
        part = body["messages"][-1]["content"][-1]["text"]
        if "### Answer: " in part and "word12" not in part:
            judged_safe.append(part.split("### Answer: ", 1)[1])
    assert any(answer.startswith(released) for answer in judged_safe)


def test_holdback_safe_stream_is_complete(gateway: Gateway) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50})
    text, reasons, _ = _stream(gateway, 10)
    assert text == "".join(f"word{i} " for i in range(10))
    assert reasons[-1] == "stop"


def test_buffer_mode_checks_once_at_the_end(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(input={"enabled": False}, output={"stream": "buffer"})
    text, reasons, _ = _stream(gateway, 8)
    assert text == "".join(f"word{i} " for i in range(8))
    assert len(guard.requests) == 1
    guard.clear()
    text, reasons, _ = _stream(gateway, 20)
    assert "word" not in text and reasons[-1] == "content_filter"


def _output_verdicts(gateway: Gateway) -> dict[tuple[str, str], float]:
    """(verdict, category) -> count of output decisions, from the gateway's /metrics."""
    text = httpx.get(f"{gateway.url}/metrics").text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "guardline_verdicts_total" and sample.labels["stage"] == "output":
                key = (sample.labels["verdict"], sample.labels["category"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


def test_monitor_mode_streams_everything_and_records(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(output={"stream": "monitor", "holdback_chars": 50})
    text, reasons, _ = _stream(gateway, 20)
    assert "word12" in text and reasons[-1] == "stop"
    # Monitor mode checks behind the client's back: the unsafe window is judged and the
    # request's output decision is recorded as unsafe (category Threat), once it settles.
    deadline = time.monotonic() + 10
    while _output_verdicts(gateway).get(("unsafe", "Threat")) != 1.0:
        assert time.monotonic() < deadline, f"not recorded: {_output_verdicts(gateway)}"
        time.sleep(0.05)
    assert _output_verdicts(gateway) == {("unsafe", "Threat"): 1.0}
    assert any("word12" in t for t in guard_texts(guard))


def test_stream_headers_and_usage_pass_through(gateway: Gateway) -> None:
    gateway.start()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "m",
            "messages": SAFE,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"authorization": "Bearer sk-test", "x-double-chunks": "3"},
    ) as response:
        assert response.headers["x-guardline-input"] == "safe"
        assert response.headers["x-guardline-output"] == "holdback"
        assert "guard-input;dur=" in response.headers["server-timing"]
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    usage = orjson.loads(lines[-2][len("data: ") :])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 12
