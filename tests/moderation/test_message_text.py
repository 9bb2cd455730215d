"""What counts as the model's text: content in both shapes, reasoning in every shape, audio."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.moderation.extract import extract_output, uncheckable_output
from proxy.moderation.message_text import (
    content_text,
    message_reasoning,
    reasoning_text,
    strip_choices,
    unreadable_content,
)


def test_content_text_reads_strings_and_text_parts() -> None:
    assert content_text("plain") == "plain"
    parts = [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}, "c"]
    assert content_text(parts) == "abc"
    assert content_text(parts, sep="\n") == "a\nb\nc"
    assert content_text(None) == "" and content_text(3) == ""


@pytest.mark.parametrize(
    ("value", "unreadable"),
    [
        (None, False),
        ("text", False),
        ([{"type": "text", "text": "x"}], False),
        ([{"type": "image_url", "image_url": {"url": "data:,"}}], True),
        ([{"type": "text"}], True),  # a text part without text: not what it claims to be
        ({"text": "x"}, True),
        (5, True),
    ],
)
def test_unreadable_content(value: object, unreadable: bool) -> None:
    assert unreadable_content(value) is unreadable


def test_reasoning_in_every_shape_without_opaque_fields() -> None:
    assert reasoning_text("think") == "think"
    details = [
        {"type": "reasoning.summary", "summary": "sum ", "id": "r1"},
        {"type": "reasoning.text", "text": "text", "signature": "c2ln", "format": "x"},
        {"type": "reasoning.encrypted", "data": "ZW5j"},
    ]
    assert reasoning_text(details) == "sum text"
    delta = {"reasoning_content": "a", "reasoning": {"text": "b"}, "reasoning_details": details}
    assert message_reasoning(delta) == "absum text"


def test_strip_choices_removes_every_reasoning_field() -> None:
    body: dict[str, Any] = {
        "choices": [
            {"message": {"content": "hi", "reasoning_content": "a", "reasoning": "b"}},
            {"message": {"content": "yo", "reasoning_details": []}},
            {"message": {"content": "no reasoning"}},
        ]
    }
    assert strip_choices(body, "message")
    assert [c["message"] for c in body["choices"]] == [
        {"content": "hi"},
        {"content": "yo"},
        {"content": "no reasoning"},
    ]
    assert not strip_choices(body, "message")


def test_extract_output_reads_everything_the_model_wrote() -> None:
    message = {
        "role": "assistant",
        "reasoning_content": "thinking",
        "content": [{"type": "text", "text": "answer"}],
        "refusal": "no",
        "audio": {"id": "a1", "data": "AAAA", "transcript": "spoken"},
        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
    }
    text = extract_output({"choices": [{"message": message}]})
    assert text == "thinking\n\nanswer\n\nno\n\nspoken\n\nf({})"
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    body = {"choices": [{"message": {"content": "x"}}, {"message": {"content": [image]}}]}
    assert uncheckable_output(body) == ["choices[1].message.content"]
