"""End to end: upstream errors reach the client without the operator's secrets, and a 5xx that
is not an OpenAI envelope arrives as one (status kept)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import orjson
import pytest

from proxy.config_schema import GatewayConfig
from proxy.upstream_errors import SecretRedactor, configured_secrets
from tests.proxy.conftest import make_config

OPERATOR_KEY = "sk-operator-Secret/1"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def keyed_gateway(start_gateway: Callable[[GatewayConfig], str], double_url: str) -> str:
    upstreams = {"double": {"type": "openai", "base_url": double_url, "api_key": OPERATOR_KEY}}
    # The double is steered by x-double-* headers: this route opts in to forwarding them.
    routes = [
        {"name": "r", "upstream": "double", "policy": "p.yaml", "forward_headers": ["x-double-*"]}
    ]
    return start_gateway(make_config(double_url, upstreams=upstreams, routes=routes))


def _post(base: str, **headers: str) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", json=BODY, headers=headers)


def test_echoed_authorization_is_redacted_from_a_4xx(keyed_gateway: str) -> None:
    r = _post(keyed_gateway, **{"x-double-status": "400", "x-double-echo": "1"})
    assert r.status_code == 400
    assert OPERATOR_KEY not in r.text
    assert OPERATOR_KEY.replace("/", "\\/") not in r.text
    error = r.json()["error"]
    assert error["message"] == "double error 400 (received Authorization: Bearer [redacted])"
    assert r.json()["echo"]["headers"]["authorization"] == "Bearer [redacted]"


def test_official_client_reads_the_redacted_message(keyed_gateway: str) -> None:
    client = openai.OpenAI(
        base_url=keyed_gateway + "/v1",
        api_key="sk-client",
        max_retries=0,
        default_headers={"x-double-status": "401", "x-double-echo": "1"},
    )
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "[redacted]" in info.value.message
    assert OPERATOR_KEY not in str(info.value.body)


def test_a_5xx_html_page_is_wrapped_in_an_envelope_with_its_status(keyed_gateway: str) -> None:
    r = _post(keyed_gateway, **{"x-double-status": "502", "x-double-error-body": "html"})
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "upstream_error" and error["code"] == "upstream_error"
    assert error["message"].startswith("Upstream 'double' answered 502 without an OpenAI error")
    assert "Bearer [redacted]" in error["message"]
    assert OPERATOR_KEY not in r.text


def test_a_5xx_envelope_passes_as_it_is_apart_from_secrets(keyed_gateway: str) -> None:
    r = _post(keyed_gateway, **{"x-double-status": "503", "x-double-echo": "1"})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "double_error"
    assert r.json()["x_double"] is True
    assert OPERATOR_KEY not in r.text


def test_a_4xx_that_is_not_an_envelope_is_passed_through(keyed_gateway: str) -> None:
    r = _post(keyed_gateway, **{"x-double-status": "404", "x-double-error-body": "html"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "text/html"
    assert "Bearer [redacted]" in r.text and OPERATOR_KEY not in r.text


def test_every_plain_secret_of_the_config_is_redacted() -> None:
    config = GatewayConfig.model_validate(
        {
            "server": {"admin_key": "admin-secret"},
            "auth": {"tenants": {"t": {"keys": ["tenant-secret", "sha256:" + "a" * 64]}}},
            "guards": {"g": {"type": "sglang", "base_url": "http://x", "api_key": "guard-sec"}},
            "default_guard": "g",
            "upstreams": {
                "o": {"type": "openai", "api_key": 'up"secret'},
                "l": {"type": "litellm", "model": "a/b", "api_key": "llm-secret"},
            },
            "routes": [{"name": "r", "upstream": "o", "policy": "p.yaml"}],
        }
    )
    secrets = configured_secrets(config)
    assert sorted(secrets) == sorted(
        ["admin-secret", "tenant-secret", "guard-sec", 'up"secret', "llm-secret"]
    )
    redactor = SecretRedactor(secrets)
    text = orjson.dumps({"m": 'up"secret tenant-secret llm-secret'})
    assert redactor.redact(text) == b'{"m":"[redacted] [redacted] [redacted]"}'


def test_an_error_event_inside_a_stream_is_redacted(keyed_gateway: str) -> None:
    headers = {"x-double-stream-error": "2", "x-double-chunks": "5"}
    with httpx.stream(
        "POST",
        keyed_gateway + "/v1/chat/completions",
        json={**BODY, "stream": True},
        headers=headers,
    ) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert OPERATOR_KEY not in text
    assert OPERATOR_KEY.replace("/", "\\/") not in text
    events = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    # The content before it passes as it came; the error event arrives whole, redacted.
    assert [e["choices"][0]["delta"].get("content") for e in events[:3]] == ["", "word0 ", "word1 "]
    error = events[-1]["error"]
    assert error["message"] == "double stream failed (received Authorization: Bearer [redacted])"
    assert error["code"] == "double_stream_error"
