"""The moderated gateway's other endpoints end to end: `check` judges the embeddings input and
the image prompt with the route policy's input check; `pass` relays unchecked; `deny` refuses.
The official openai client, the upstream double and the guard double, all real servers."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.doubles.sglang_server import SGLangDouble
from tests.doubles.upstream import UpstreamDouble
from tests.moderation.conftest import Gateway, guard_texts
from tests.proxy.test_e2e_endpoints import wav_bytes


def start(gateway: Gateway, endpoints: dict[str, str] | None = None, **policy: Any) -> None:
    gateway.policy("main", **policy)
    route: dict[str, Any] = {"name": "default", "upstream": "double", "policy": "main.yaml"}
    if endpoints is not None:
        route["endpoints"] = endpoints
    gateway.start(routes=[route])


def test_embeddings_safe_input_is_checked_then_relayed(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    start(gateway)
    raw = gateway.client().embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["the capital of France", "a quiet river"]
    )
    assert raw.headers["x-guardline-input"] == "safe"
    assert raw.headers["x-guardline-output"] == "unchecked"
    assert raw.headers["x-guardline-policy"].startswith("main@")
    assert raw.headers["x-guardline-route"] == "default"
    assert "guard-input;dur=" in raw.headers["server-timing"]
    result = raw.parse()
    assert [d.embedding for d in result.data] == [[0.25, -0.5, 0.125]] * 2
    # Each text was judged on its own, like a chat prompt.
    assert sorted(guard_texts(guard)) == ["a quiet river", "the capital of France"]


def test_embeddings_unsafe_input_is_a_400_and_never_reaches_the_upstream(
    gateway: Gateway, double: UpstreamDouble
) -> None:
    start(gateway)
    before = len(double.received)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().embeddings.create(
            model="text-embedding-3-small", input=["hello", "how to build a bomb"]
        )
    error = caught.value
    assert error.code == "content_policy_violation"
    assert error.type == "invalid_request_error"
    assert error.param == "input[1]"
    assert error.response.headers["x-guardline-input"] == "unsafe"
    assert error.response.headers["x-guardline-categories"] == "Guns and Illegal Weapons"
    assert len(double.received) == before


def test_image_prompt_is_checked(gateway: Gateway, double: UpstreamDouble) -> None:
    # A refusal policy still gets the 400: an image or an embedding has no refusal shape.
    start(gateway, on_block={"input": "refusal"})
    client = gateway.client()
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a red apple")
    assert raw.headers["x-guardline-input"] == "safe"
    assert raw.parse().data is not None
    before = len(double.received)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="gpt-image-1", prompt="someone about to kill a man")
    assert caught.value.code == "content_policy_violation"
    assert caught.value.param == "prompt"
    assert len(double.received) == before


def test_token_input_follows_on_uncheckable(gateway: Gateway, guard: SGLangDouble) -> None:
    start(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().embeddings.create(model="e", input=[[1, 2, 3]])
    assert caught.value.code == "unsupported_content"
    assert caught.value.param == "input"


def test_token_input_flagged_is_relayed_and_marked(gateway: Gateway, guard: SGLangDouble) -> None:
    start(gateway, input={"on_uncheckable": "flag"})
    raw = gateway.client().embeddings.with_raw_response.create(model="e", input=[1, 2, 3])
    assert raw.headers["x-guardline-unchecked"] == "input"
    assert raw.headers["x-guardline-input"] == "skipped"
    assert guard.requests == []


def test_guard_down_fails_closed_with_503(gateway: Gateway, guard: SGLangDouble) -> None:
    start(gateway)
    guard.configure(status=503)
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().embeddings.create(model="e", input="hello")
    assert caught.value.status_code == 503
    assert caught.value.code == "guard_unavailable"
    assert caught.value.response.headers["x-guardline-route"] == "default"


def test_bad_bodies_are_400_envelopes(gateway: Gateway) -> None:
    start(gateway)
    for body, code, param in (
        (b"{not json", "invalid_json", None),
        (b"[1]", "invalid_type", None),
        (b'{"model": "e"}', "missing_required_parameter", "input"),
        (b'{"model": "e", "input": {"a": 1}}', "invalid_type", "input"),
    ):
        response = httpx.post(
            gateway.url + "/v1/embeddings",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, param), body
        assert set(error) == {"message", "type", "param", "code"}


def test_pass_relays_audio_unchecked_and_deny_refuses(
    gateway: Gateway, guard: SGLangDouble
) -> None:
    start(gateway, endpoints={"/v1/audio/transcriptions": "pass", "/v1/embeddings": "deny"})
    client = gateway.client()
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.wav", wav_bytes(), "audio/wav")
    )
    assert raw.headers["x-guardline-input"] == "unchecked"
    assert raw.headers["x-guardline-output"] == "unchecked"
    assert raw.headers["x-guardline-policy"].startswith("main@")
    assert raw.parse().text.startswith("double heard")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.embeddings.create(model="e", input="hello")
    assert caught.value.code == "endpoint_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):  # not named: the safe default
        client.files.list()
    assert guard.requests == []


def test_a_shadow_policy_judges_the_checked_input_too(gateway: Gateway) -> None:
    gateway.policy("candidate")
    start(gateway, shadow="candidate.yaml")
    gateway.client().embeddings.create(model="e", input="a quiet river")

    def compared() -> int:
        shadow = httpx.get(f"{gateway.url}/readyz").json()["checks"].get("shadow", {})
        return sum(c["compared"] for key, c in shadow.items() if key.endswith(":input"))

    deadline = time.monotonic() + 10
    while compared() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert compared() == 1


def test_parallel_input_check(gateway: Gateway) -> None:
    start(gateway, input={"parallel": True})
    client = gateway.client()
    raw = client.embeddings.with_raw_response.create(model="e", input="a quiet river")
    assert raw.headers["x-guardline-input"] == "safe"
    timing = raw.headers["server-timing"]
    assert "guard-input;dur=" in timing and "upstream;dur=" in timing
    assert raw.parse().data[0].embedding == [0.25, -0.5, 0.125]
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="e", input="how to build a bomb")
    assert caught.value.code == "content_policy_violation"
    # The gateway still serves (the cancelled upstream call left nothing behind).
    assert client.embeddings.create(model="e", input="hello there").data
