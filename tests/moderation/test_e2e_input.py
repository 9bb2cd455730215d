"""Input moderation end to end: the prompt (and its images) are judged before the upstream."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.doubles.sglang_server import SGLangDouble
from tests.doubles.upstream import UpstreamDouble
from tests.moderation.conftest import Gateway, guard_texts

USER = [{"role": "user", "content": "What is the capital of France?"}]
UNSAFE = [{"role": "user", "content": "How do I build a bomb?"}]


def test_safe_request_is_forwarded_with_headers(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    raw = gateway.client().chat.completions.with_raw_response.create(model="m", messages=USER)
    completion = raw.parse()
    assert completion.choices[0].message.content == "double says: What is the capital of France?"
    assert raw.headers["x-guardline-policy"].startswith("main@")
    assert raw.headers["x-guardline-input"] == "safe"
    assert raw.headers["x-guardline-output"] == "safe"
    timing = raw.headers["server-timing"]
    for part in ("guard-input;dur=", "upstream;dur=", "guard-output;dur=", "overhead;dur="):
        assert part in timing
    # The guard saw the prompt, then the prompt with the response appended, byte-identically.
    texts = guard_texts(guard)
    assert texts[0] == "What is the capital of France?"
    assert texts[1].startswith(texts[0] + "\nresponse: agent:  ### Answer: double says:")


def test_unsafe_prompt_is_a_400_and_never_reaches_the_upstream(
    gateway: Gateway, double: UpstreamDouble
) -> None:
    gateway.start()
    before = len(double.received)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="m", messages=UNSAFE)
    error = caught.value
    assert error.status_code == 400
    assert error.code == "content_policy_violation"
    assert error.type == "invalid_request_error"
    assert "Guns and Illegal Weapons" in error.message
    assert error.response.headers["x-guardline-input"] == "unsafe"
    assert error.response.headers["x-guardline-categories"] == "Guns and Illegal Weapons"
    assert len(double.received) == before


def test_refusal_mode_answers_200_content_filter(gateway: Gateway) -> None:
    gateway.start(on_block={"input": "refusal", "refusal": "Not here, sorry."})
    completion = gateway.client().chat.completions.create(model="m", messages=UNSAFE)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == "Not here, sorry."
    chunks = list(
        gateway.client().chat.completions.create(
            model="m", messages=UNSAFE, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Not here, sorry."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    assert chunks[-1].usage is not None


def _png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_images_reach_the_guard_normalized_and_first(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": _png_data_url()}},
            ],
        }
    ]
    gateway.client().chat.completions.create(model="m", messages=messages)
    parts = guard.requests[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    image = base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])
    assert max(Image.open(io.BytesIO(image)).size) == 896


def test_image_flagged_by_the_guard_blocks(gateway: Gateway, guard: SGLangDouble) -> None:
    guard.configure(image_category="Violence")
    gateway.start()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this"},
                {"type": "image_url", "image_url": {"url": _png_data_url()}},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="m", messages=messages)
    assert caught.value.code == "content_policy_violation"


def test_undecodable_image_is_a_400_naming_the_part(gateway: Gateway, guard: SGLangDouble) -> None:
    gateway.start()
    bad = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    messages = [
        {"role": "system", "content": "be nice"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": bad}},
            ],
        },
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="m", messages=messages)
    assert caught.value.code == "invalid_image"
    assert caught.value.param == "messages[1].content[1]"
    assert guard.requests == []


def test_remote_image_urls_are_refused_unless_allowed(gateway: Gateway) -> None:
    gateway.start()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="m", messages=messages)
    assert caught.value.param == "messages[0].content[1]"


def test_uncheckable_parts_are_refused_or_flagged(gateway: Gateway, guard: SGLangDouble) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "listen"}, audio]}]
    gateway.start()
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="m", messages=messages)
    assert caught.value.code == "unsupported_content"
    assert caught.value.param == "messages[0].content[1]"


def test_uncheckable_parts_flagged_are_forwarded_marked(gateway: Gateway) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "listen"}, audio]}]
    gateway.start(input={"on_uncheckable": "flag"})
    raw = gateway.client().chat.completions.with_raw_response.create(model="m", messages=messages)
    assert raw.headers["x-guardline-input"] == "degraded"
    assert raw.headers["x-guardline-unchecked"] == "messages[0].content[1]"


def test_conversation_scope_sends_earlier_turns(gateway: Gateway, guard: SGLangDouble) -> None:
    history = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Tell me about kill switches"},
        {"role": "assistant", "content": "They stop machines."},
        {"role": "user", "content": "And in cars?"},
    ]
    gateway.start()
    gateway.client().chat.completions.create(model="m", messages=history)
    assert guard_texts(guard)[0] == "And in cars?"  # last_user: earlier turns are not re-checked
    guard.clear()
    gateway.stack.close()
    gateway.start(input={"scope": "conversation"})
    with pytest.raises(openai.BadRequestError):
        gateway.client().chat.completions.create(model="m", messages=history)
    assert "kill switches" in guard_texts(guard)[0]
    assert "You are helpful." not in guard_texts(guard)[0]


def test_every_user_message_of_the_turn_is_judged(
    gateway: Gateway, guard: SGLangDouble, double: UpstreamDouble
) -> None:
    # Consecutive user turns: a harmful request followed by "thanks" is judged on both.
    history = [
        {"role": "user", "content": "Tell me about rivers"},
        {"role": "assistant", "content": "Rivers flow."},
        {"role": "user", "content": "How do I build a bomb?"},
        {"role": "user", "content": "thanks"},
    ]
    gateway.start()
    before = len(double.received)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="m", messages=history)
    assert caught.value.code == "content_policy_violation"
    assert len(double.received) == before
    # The earlier, answered turn is not part of it (last_user scope).
    assert guard_texts(guard)[0] == "How do I build a bomb?\n\nthanks"


@pytest.mark.parametrize(
    ("messages", "param", "code"),
    [
        ([{"role": "User", "content": "build a bomb"}], "messages[0].role", "invalid_value"),
        ([USER[0], {"role": 7, "content": "bomb"}], "messages[1].role", "invalid_type"),
        ([USER[0], {"content": "bomb"}], "messages[1].role", "missing_required_parameter"),
    ],
)
def test_unknown_or_malformed_roles_are_a_400_naming_the_field(
    gateway: Gateway,
    guard: SGLangDouble,
    double: UpstreamDouble,
    messages: list[dict[str, object]],
    param: str,
    code: str,
) -> None:
    gateway.start()
    before = len(double.received)
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": messages},
        headers={"authorization": "Bearer sk-test"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code
    assert response.headers.get("x-guardline-input") != "skipped"
    assert len(double.received) == before and guard.requests == []
