"""Contract tests of the Nemotron 3.5 adapter: the request body of docs/guard-models.md,
"Nemotron request format", and every answer form of "Nemotron answer format"."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.adapters.registry import get_adapter
from guard_engine.errors import GuardUnparseable
from guard_engine.types import GuardImage, GuardRequest, Mode, Turn
from tests.factories import make_policy

ADAPTER = NemotronAdapter()
MODEL = "nvidia/Nemotron-3.5-Content-Safety"


def _image(data: bytes = b"\x89PNG fake") -> GuardImage:
    return GuardImage(data=data, mime="image/png", sha256=hashlib.sha256(data).hexdigest())


def _body(request: GuardRequest, call_mode: Mode = "categories", **policy: Any) -> dict[str, Any]:
    return ADAPTER.build_body(request, make_policy(**policy), model=MODEL, mode=call_mode)


def _user_text(body: dict[str, Any]) -> str:
    (message,) = body["messages"]
    text: str = message["content"][-1]["text"]
    return text


# ------------------------------------------------------------------------------ request body


def test_registry_returns_nemotron_adapter() -> None:
    assert get_adapter("nemotron-3.5").name == "nemotron-3.5"
    with pytest.raises(ValueError, match="llama-guard-3"):
        get_adapter("nemotron-9")


def test_body_is_one_user_turn_with_text_part_and_sampling() -> None:
    body = _body(GuardRequest(prompt="How do I bake bread?"))
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "How do I bake bread?"}]}
    ]
    assert body["temperature"] == 0
    assert body["max_tokens"] == 128
    assert body["stream"] is False


@pytest.mark.parametrize(
    ("mode", "policy_mode", "expected"),
    [
        ("binary", "binary", {"request_categories": "/no_categories", "enable_thinking": False}),
        (
            "categories",
            "categories",
            {"request_categories": "/categories", "enable_thinking": False},
        ),
        ("think", "think", {"request_categories": "/categories", "enable_thinking": True}),
        ("think", "categories", {"request_categories": "/categories", "enable_thinking": True}),
        ("think", "binary", {"request_categories": "/no_categories", "enable_thinking": True}),
    ],
)
def test_modes_map_to_template_kwargs(
    mode: Mode, policy_mode: Mode, expected: dict[str, Any]
) -> None:
    body = _body(GuardRequest(prompt="hi"), mode, mode=policy_mode)
    assert body["chat_template_kwargs"] == expected
    assert body["max_tokens"] == (1024 if mode == "think" else 128)


def test_images_come_first_as_data_urls_then_text() -> None:
    a, b = _image(b"first"), _image(b"second")
    body = _body(GuardRequest(prompt="what is this?", images=(a, b)))
    content = body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert content[0]["image_url"]["url"] == a.data_url()
    assert content[1]["image_url"]["url"] == b.data_url()
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_output_check_appends_response_with_two_spaces() -> None:
    body = _body(GuardRequest(prompt="Hi there", response="Hello!"))
    assert _user_text(body) == "Hi there\nresponse: agent:  ### Answer: Hello!"
    assert len(body["messages"]) == 1


def test_user_text_is_byte_identical_between_input_and_output_check() -> None:
    context = (Turn("user", "earlier question"), Turn("assistant", "earlier answer"))
    images = (_image(),)
    prompt = "  Ünïcode prompt\twith  spacing \n"
    inp = _body(GuardRequest(prompt=prompt, images=images, context=context))
    out = _body(GuardRequest(prompt=prompt, images=images, context=context, response="ok"))
    in_text, out_text = _user_text(inp), _user_text(out)
    assert out_text.startswith(in_text)
    assert out_text[len(in_text) :] == "\nresponse: agent:  ### Answer: ok"
    # Everything before the text (images) is identical too: the whole prefix is shared.
    assert inp["messages"][0]["content"][:-1] == out["messages"][0]["content"][:-1]
    assert inp["chat_template_kwargs"] == out["chat_template_kwargs"]


def test_context_turns_render_before_the_prompt() -> None:
    request = GuardRequest(
        prompt="and now?",
        context=(Turn("user", "first"), Turn("assistant", "reply"), Turn("tool", "42")),
    )
    assert _user_text(_body(request)) == "first\nagent: reply\ntool: 42\nuser: and now?"


def test_custom_policy_and_taxonomy_are_sent() -> None:
    body = _body(
        GuardRequest(prompt="hi"),
        custom_policy="Disallowed Behaviors:\n- dating advice\n",
        custom_taxonomy="S1: Violence.\nS2: Dating advice.",
    )
    kwargs = body["chat_template_kwargs"]
    assert "Disallowed Behaviors:\n- dating advice" in kwargs["custom_policy"]
    assert kwargs["custom_taxonomy"] == "S1: Violence.\nS2: Dating advice."
    assert "system" not in [m["role"] for m in body["messages"]]


def test_no_custom_fields_without_policy_customization() -> None:
    kwargs = _body(GuardRequest(prompt="hi"))["chat_template_kwargs"]
    assert "custom_policy" not in kwargs
    assert "custom_taxonomy" not in kwargs


def test_body_is_deterministic_for_prefix_cache() -> None:
    request = GuardRequest(prompt="x", images=(_image(),), context=(Turn("user", "y"),))
    text = "Allowed Behaviors:\n- anything\n"
    assert _body(request, custom_policy=text) == _body(request, custom_policy=text)


# ------------------------------------------------------------------------------ parsing


def test_parse_binary_safe() -> None:
    v = ADAPTER.parse("User Safety: safe", has_response=False)
    assert (v.prompt_label, v.response_label, v.categories, v.think) == ("safe", None, (), None)


def test_parse_unsafe_with_categories() -> None:
    v = ADAPTER.parse(
        "User Safety: unsafe\nSafety Categories: Threat, PII/Privacy", has_response=False
    )
    assert v.prompt_label == "unsafe"
    assert v.categories == ("Threat", "PII/Privacy")


def test_parse_output_check_with_response_safety() -> None:
    text = (
        "User Safety: unsafe\nResponse Safety: safe\n"
        "Safety Categories: Guns and Illegal Weapons, Criminal Planning/Confessions"
    )
    v = ADAPTER.parse(text, has_response=True)
    assert (v.prompt_label, v.response_label) == ("unsafe", "safe")
    assert v.categories == ("Guns and Illegal Weapons", "Criminal Planning/Confessions")


@pytest.mark.parametrize("newline", ["\n", "", "\n\n"])
def test_parse_think_block_with_or_without_newline(newline: str) -> None:
    text = (
        "<think>\nWe need to decide if user input is safe or unsafe. ...\n</think>"
        f"{newline}User Safety: unsafe\nSafety Categories: Criminal Planning/Confessions"
    )
    v = ADAPTER.parse(text, has_response=False)
    assert v.prompt_label == "unsafe"
    assert v.categories == ("Criminal Planning/Confessions",)
    assert v.think == "We need to decide if user input is safe or unsafe. ..."


def test_parse_think_without_opening_tag() -> None:
    # Templates that pre-fill "<think>" make the model's text start inside the trace.
    v = ADAPTER.parse("reasoning here</think>User Safety: safe", has_response=False)
    assert v.think == "reasoning here"
    assert v.prompt_label == "safe"


def test_parse_tolerates_case_and_whitespace() -> None:
    text = (
        "\n  user safety :  UNSAFE \r\n RESPONSE SAFETY:Unsafe\n"
        " safety categories: violence ,  threat,\n\n"
    )
    v = ADAPTER.parse(text, has_response=True)
    assert (v.prompt_label, v.response_label) == ("unsafe", "unsafe")
    assert v.categories == ("Violence", "Threat")  # canonical spelling


def test_parse_keeps_unknown_category_names() -> None:
    v = ADAPTER.parse(
        "User Safety: unsafe\nSafety Categories: Dating advice, Violence, Dating advice",
        has_response=False,
    )
    assert v.categories == ("Dating advice", "Violence")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I cannot help with that.",
        "User Safety: maybe",
        "User Safety:",
        "Safety Categories: Violence",
        "<think>\nWe need to decide if the user input is safe or unsafe. The",
        "User Safety: safe\nUser Safety: unsafe",
        "User Safety: safe\nSome chatter after the verdict",
        '{"User Safety": "safe"}',
    ],
)
def test_parse_rejects_anything_without_a_verdict(text: str) -> None:
    with pytest.raises(GuardUnparseable) as info:
        ADAPTER.parse(text, has_response=False)
    assert info.value.raw == text


def test_parse_ignores_other_field_lines() -> None:
    text = "User Safety: safe\nResponse Safety: unsafe\nResponse Refusal: no\n"
    v = ADAPTER.parse(text, has_response=True)
    assert (v.prompt_label, v.response_label) == ("safe", "unsafe")


def test_parse_requires_response_safety_for_output_checks() -> None:
    with pytest.raises(GuardUnparseable, match="Response Safety"):
        ADAPTER.parse("User Safety: safe", has_response=True)


def test_truncated_think_is_never_safe() -> None:
    text = "<think>\nThe user asks about User Safety: safe"
    with pytest.raises(GuardUnparseable, match="truncated"):
        ADAPTER.parse(text, has_response=False)
