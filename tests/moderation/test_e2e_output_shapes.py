"""Everything the model writes is output, end to end: reasoning in every field providers use,
content as an array of parts, and stream events the gateway cannot parse.

The upstream double writes reasoning, part arrays and a malformed event when asked by header;
the guard double flags "bomb" and "word12" (tests.moderation.conftest.UNSAFE_WORDS).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.doubles.sglang_server import SGLangDouble
from tests.moderation.conftest import Gateway, guard_texts

SAFE = [{"role": "user", "content": "Hello there"}]
UNSAFE_THOUGHT = "first I explain how to build a bomb"
FIELDS = ["reasoning_content", "reasoning", "reasoning_details"]


def _post(gateway: Gateway, headers: dict[str, str], **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": SAFE, **body},
        headers={"authorization": "Bearer sk-test", **headers},
    )


def _stream(gateway: Gateway, headers: dict[str, str]) -> tuple[httpx.Headers, list[Any], str]:
    """Streams through the gateway: (response headers, parsed chunks, the raw body)."""
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": SAFE, "stream": True},
        headers={"authorization": "Bearer sk-test", **headers},
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    chunks = []
    for line in raw.splitlines():
        if line.startswith("data: {"):
            try:
                chunks.append(orjson.loads(line[len("data: ") :]))
            except orjson.JSONDecodeError:
                continue  # an SSE client skips what it cannot parse
    return response.headers, chunks, raw


def _finish_reasons(chunks: list[Any]) -> list[str]:
    return [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]


@pytest.mark.parametrize("field", FIELDS)
def test_unsafe_reasoning_is_blocked_in_a_complete_answer(gateway: Gateway, field: str) -> None:
    gateway.start(on_block={"refusal": "[blocked]"})
    headers = {"x-double-reasoning": UNSAFE_THOUGHT, "x-double-reasoning-field": field}
    response = _post(gateway, headers)
    assert response.status_code == 200
    assert response.headers["x-guardline-output"] == "unsafe"
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "[blocked]"
    assert response.json()["choices"][0]["finish_reason"] == "content_filter"
    assert "bomb" not in response.text  # the reasoning went with the refused answer


@pytest.mark.parametrize("field", FIELDS)
def test_unsafe_reasoning_is_cut_from_a_stream(gateway: Gateway, field: str) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50})
    headers = {"x-double-reasoning": UNSAFE_THOUGHT, "x-double-reasoning-field": field}
    _, chunks, raw = _stream(gateway, headers)
    assert "bomb" not in raw
    assert _finish_reasons(chunks)[-1] == "content_filter"
    assert raw.rstrip().endswith("data: [DONE]")


def test_safe_reasoning_is_checked_and_delivered(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    response = _post(gateway, {"x-double-reasoning": "the user greets me"})
    assert response.headers["x-guardline-output"] == "safe"
    assert response.json()["choices"][0]["message"]["reasoning_content"] == "the user greets me"
    assert any("the user greets me" in text for text in guard_texts(guard))


def test_strip_removes_reasoning_unchecked_from_a_complete_answer(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    gateway.start(output={"reasoning": "strip"})
    for field in FIELDS:
        headers = {"x-double-reasoning": UNSAFE_THOUGHT, "x-double-reasoning-field": field}
        response = _post(gateway, headers)
        assert response.headers["x-guardline-output"] == "safe"
        message = response.json()["choices"][0]["message"]
        assert message["content"] == "double says: Hello there"
        assert not set(FIELDS) & set(message), field
    assert not any("bomb" in text for text in guard_texts(guard))  # judged what was sent


def test_strip_removes_reasoning_from_a_stream(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start(output={"reasoning": "strip", "holdback_chars": 50})
    for field in FIELDS:
        headers = {"x-double-reasoning": UNSAFE_THOUGHT, "x-double-reasoning-field": field}
        _, chunks, raw = _stream(gateway, headers)
        assert "bomb" not in raw and field not in raw
        text = "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])
        assert text == "word0 word1 word2 "
        assert _finish_reasons(chunks) == ["stop"]
    assert not any("bomb" in text for text in guard_texts(guard))


def test_content_parts_are_checked_in_a_complete_answer(gateway: Gateway) -> None:
    gateway.start(input={"enabled": False}, on_block={"refusal": "[blocked]"})
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "a bomb"}]},
        headers={"authorization": "Bearer sk-test", "x-double-content-parts": "1"},
    )
    assert response.headers["x-guardline-output"] == "unsafe"
    assert response.json()["choices"][0]["message"]["content"] == "[blocked]"


def test_streamed_content_parts_are_held_back_and_cut(gateway: Gateway) -> None:
    gateway.start(output={"stream": "holdback", "holdback_chars": 50})
    headers = {"x-double-content-parts": "1", "x-double-chunks": "40"}
    _, chunks, raw = _stream(gateway, headers)
    assert "word12" not in raw
    assert "word0" in raw  # the parts before it were checked and released
    assert _finish_reasons(chunks)[-1] == "content_filter"


@pytest.mark.parametrize("mode", ["holdback", "buffer"])
def test_unparseable_event_is_refused_not_released(gateway: Gateway, mode: str) -> None:
    gateway.start(output={"stream": mode, "holdback_chars": 50})
    _, chunks, raw = _stream(gateway, {"x-double-malformed-after": "2", "x-double-chunks": "5"})
    assert "pipe bomb" not in raw
    assert "word2" not in raw  # nothing after it is released either
    assert _finish_reasons(chunks) == ["content_filter"]
    assert raw.rstrip().endswith("data: [DONE]")


def test_unparseable_event_flagged_is_released_and_recorded(gateway: Gateway) -> None:
    gateway.start(input={"on_uncheckable": "flag"}, output={"holdback_chars": 50})
    _, chunks, raw = _stream(gateway, {"x-double-malformed-after": "2", "x-double-chunks": "5"})
    assert "pipe bomb" in raw  # the policy chose to release what it cannot check...
    assert _finish_reasons(chunks) == ["stop"]
    # ...and the decision says so: degraded, never safe. The record is written after the
    # last byte, so wait for it (a bounded poll of the counter, no timing assertion).
    metric = 'stage="output"'
    for _ in range(200):
        scraped = httpx.get(f"{gateway.url}/metrics").text
        lines = [line for line in scraped.splitlines() if "uncheckable_flagged" in line]
        if any(metric in line for line in lines):
            break
        httpx.get(f"{gateway.url}/healthz")  # a round trip lets the gateway finish the record
    else:
        raise AssertionError("no uncheckable_flagged output decision was recorded")


def test_non_text_content_parts_follow_the_uncheckable_rule(gateway: Gateway) -> None:
    headers = {"x-double-content-parts": "image"}
    gateway.start(on_block={"refusal": "[blocked]"})
    refused = _post(gateway, headers)
    assert refused.status_code == 200
    assert refused.json()["choices"][0]["message"]["content"] == "[blocked]"
    assert refused.json()["choices"][0]["finish_reason"] == "content_filter"
    assert refused.headers["x-guardline-output"] == "degraded"
    assert "image_url" not in refused.text
    _, chunks, raw = _stream(gateway, headers)
    assert "image_url" not in raw and _finish_reasons(chunks) == ["content_filter"]

    gateway.stack.close()
    gateway.start(input={"on_uncheckable": "flag"})
    flagged = _post(gateway, headers)
    assert flagged.json()["choices"][0]["message"]["content"][1]["type"] == "image_url"
    assert flagged.headers["x-guardline-output"] == "degraded"
    assert flagged.headers["x-guardline-unchecked"] == "choices[0].message.content"


def test_strip_applies_even_when_the_output_is_not_checked(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    gateway.start(output={"enabled": False, "reasoning": "strip"})
    headers = {"x-double-reasoning": UNSAFE_THOUGHT}
    response = _post(gateway, headers)
    assert response.headers["x-guardline-output"] == "skipped"
    assert "reasoning_content" not in response.json()["choices"][0]["message"]
    _, chunks, raw = _stream(gateway, headers)
    assert "bomb" not in raw and "reasoning_content" not in raw
    assert _finish_reasons(chunks) == ["stop"] and raw.rstrip().endswith("data: [DONE]")
