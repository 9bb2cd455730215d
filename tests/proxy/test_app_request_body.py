"""parse_chat_body: one orjson parse, only the fields the gateway reads are validated."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidField, InvalidJSON, InvalidRequest
from proxy.request_body import parse_chat_body


def test_valid_body_keeps_the_original_bytes() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x_vendor":[1,2]}'
    body = parse_chat_body(raw)
    assert body.raw is raw
    assert body.model == "m"
    assert body.stream is False and body.include_usage is False
    assert body.with_model("m") is raw


def test_stream_and_usage_flags() -> None:
    raw = orjson.dumps(
        {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    )
    body = parse_chat_body(raw)
    assert body.stream and body.include_usage


def test_nulls_mean_absent() -> None:
    raw = b'{"model":"m","messages":[],"stream":null,"stream_options":null}'
    body = parse_chat_body(raw)
    assert body.stream is False and body.include_usage is False


def test_model_rewrite_keeps_every_other_field() -> None:
    raw = b'{"model":"a","messages":[],"unknown":{"x":1.5}}'
    rewritten = orjson.loads(parse_chat_body(raw).with_model("b"))
    assert rewritten == {"model": "b", "messages": [], "unknown": {"x": 1.5}}


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a":1}x', b"\xff\xfe"])
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON) as info:
        parse_chat_body(raw)
    assert info.value.status == 400 and info.value.code == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b'"s"', b"3", b"null"])
def test_body_must_be_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_body(raw)
    assert info.value.status == 400


_MISSING = "missing_required_parameter"
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": []}, "model", "missing_required_parameter"),
        ({"model": None, "messages": []}, "model", "missing_required_parameter"),
        ({"model": ["m"], "messages": []}, "model", "invalid_type"),
        ({"model": "m"}, "messages", "missing_required_parameter"),
        ({"model": "m", "messages": {}}, "messages", "invalid_type"),
        ({"model": "m", "messages": [{}, 3]}, "messages[1]", "invalid_type"),
        ({"model": "m", "messages": [], "stream": 1}, "stream", "invalid_type"),
        # Moderation reads roles: an unknown one is refused, never judged as nobody's.
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role", _MISSING),
        ({"model": "m", "messages": [{"role": None}]}, "messages[0].role", _MISSING),
        ({"model": "m", "messages": [USER, {"role": "User"}]}, "messages[1].role", "invalid_value"),
        ({"model": "m", "messages": [{"role": 1}]}, "messages[0].role", "invalid_type"),
        ({"model": "m", "messages": [{"role": "human"}]}, "messages[0].role", "invalid_value"),
        ({"model": "m", "messages": [], "stream_options": []}, "stream_options", "invalid_type"),
    ],
)
def test_wrong_fields_name_the_param(payload: dict[str, object], param: str, code: str) -> None:
    with pytest.raises(InvalidField) as info:
        parse_chat_body(orjson.dumps(payload))
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.envelope()["error"]["param"] == param


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_every_openai_role_is_accepted(role: str) -> None:
    body = parse_chat_body(orjson.dumps({"model": "m", "messages": [{"role": role}]}))
    assert body.messages[0]["role"] == role
