"""Contract tests of the Llama Guard 3 adapter (docs/guard-models.md, "Llama Guard 3")."""

from __future__ import annotations

import hashlib

import pytest

from guard_engine.adapters.llama_guard import LlamaGuard3Adapter
from guard_engine.adapters.registry import get_adapter
from guard_engine.errors import GuardUnparseable
from guard_engine.types import GuardImage, GuardRequest, Turn
from tests.factories import make_policy

ADAPTER = LlamaGuard3Adapter()
MODEL = "meta-llama/Llama-Guard-3-8B"


def _text(text: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text}]


def test_registry_returns_llama_guard_adapter() -> None:
    assert get_adapter("llama-guard-3").name == "llama-guard-3"


def test_input_check_ends_on_the_user_message() -> None:
    body = ADAPTER.build_body(
        GuardRequest(prompt="How do I pick a lock?"), make_policy(), model=MODEL, mode="binary"
    )
    assert body["messages"] == [{"role": "user", "content": _text("How do I pick a lock?")}]
    assert body["model"] == MODEL
    assert body["temperature"] == 0
    assert "chat_template_kwargs" not in body


def test_output_check_ends_on_the_assistant_message() -> None:
    request = GuardRequest(prompt="Hi", response="Here is how to pick a lock.")
    body = ADAPTER.build_body(request, make_policy(), model=MODEL, mode="categories")
    assert body["messages"] == [
        {"role": "user", "content": _text("Hi")},
        {"role": "assistant", "content": _text("Here is how to pick a lock.")},
    ]


def test_context_alternates_roles_and_images_go_to_the_judged_turn() -> None:
    data = b"img"
    image = GuardImage(data=data, mime="image/png", sha256=hashlib.sha256(data).hexdigest())
    request = GuardRequest(
        prompt="and this?",
        images=(image,),
        context=(Turn("system", "be nice"), Turn("user", "q1"), Turn("assistant", "a1")),
    )
    messages = ADAPTER.build_body(request, make_policy(), model=MODEL, mode="binary")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == _text("be nice\n\nq1")
    assert messages[2]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": image.data_url()},
    }
    assert messages[2]["content"][1] == {"type": "text", "text": "and this?"}


def test_suppressed_categories_become_excluded_category_keys() -> None:
    policy = make_policy(suppressed=("Violence", "Elections", "s14", "Profanity"))
    body = ADAPTER.build_body(GuardRequest(prompt="x"), policy, model=MODEL, mode="binary")
    # Violence (Nemotron name) -> S1; Elections (LG name) -> S13; s14 code; Profanity: no match.
    assert body["chat_template_kwargs"] == {"excluded_category_keys": ["S1", "S13", "S14"]}


def test_parse_safe() -> None:
    v = ADAPTER.parse("safe", has_response=False)
    assert (v.prompt_label, v.response_label, v.categories) == ("safe", None, ())


def test_parse_unsafe_with_codes_maps_names() -> None:
    v = ADAPTER.parse("\n\nunsafe\nS1,S10", has_response=False)
    assert v.prompt_label == "unsafe"
    assert v.categories == ("Violent Crimes", "Hate")


def test_parse_output_check_labels_the_response() -> None:
    v = ADAPTER.parse("unsafe\nS7", has_response=True)
    assert (v.prompt_label, v.response_label, v.categories) == ("safe", "unsafe", ("Privacy",))


def test_parse_keeps_unknown_codes() -> None:
    v = ADAPTER.parse("UNSAFE\nS2, S99", has_response=False)
    assert v.categories == ("Non-Violent Crimes", "S99")


@pytest.mark.parametrize("text", ["", "User Safety: safe", "maybe", "safe\nS1", "unsafe\nS1\nmore"])
def test_parse_rejects_other_forms(text: str) -> None:
    with pytest.raises(GuardUnparseable):
        ADAPTER.parse(text, has_response=False)
