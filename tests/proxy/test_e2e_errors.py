"""End to end: every failure is an OpenAI error envelope the official client understands."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.config_schema import GatewayConfig
from tests.proxy.conftest import make_config

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-client", max_retries=0)


def envelope(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return dict(error)


def test_upstream_4xx_pass_through_unchanged(gateway: str, double_url: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client(gateway).chat.completions.create(
            model="m",
            messages=USER,
            extra_headers={"x-double-status": "429"},
        )
    assert info.value.status_code == 429
    assert info.value.code == "x"
    assert "double error 429" in info.value.message
    direct = httpx.post(
        double_url + "/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"x-double-status": "400"},
    )
    proxied = httpx.post(
        gateway + "/v1/chat/completions",
        json={"model": "m", "messages": USER},
        headers={"x-double-status": "400"},
    )
    assert proxied.status_code == 400
    assert proxied.content == direct.content


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_connect_error_is_502(start_gateway: Callable[[GatewayConfig], str]) -> None:
    base = start_gateway(make_config(f"http://127.0.0.1:{_closed_port()}/v1"))
    with pytest.raises(openai.InternalServerError) as info:
        client(base).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"


def test_upstream_timeout_is_504(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    config = make_config(
        double_url,
        upstreams={"double": {"type": "openai", "base_url": double_url, "read_timeout_s": 0.2}},
    )
    base = start_gateway(config)
    with pytest.raises(openai.InternalServerError) as info:
        client(base).chat.completions.create(
            model="m",
            messages=USER,
            extra_headers={"x-double-delay-ms": "3000"},
        )
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


def test_upstream_dying_mid_stream_ends_with_an_error_event(gateway: str) -> None:
    stream = client(gateway).chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        extra_headers={"x-double-chunks": "10", "x-double-die-after": "3"},
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3  # every complete event before the break arrived
    assert "unreachable" in info.value.message


def test_malformed_json_is_400_invalid_json(gateway: str) -> None:
    response = httpx.post(gateway + "/v1/chat/completions", content=b'{"model": "m",')
    assert response.status_code == 400
    assert envelope(response)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": 3, "messages": USER}, "model"),
        ({"messages": USER, "model": openai.NOT_GIVEN}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": USER, "stream_options": True}, "stream_options"),
    ],
)
def test_wrong_types_are_400_naming_the_field(
    gateway: str, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(**body)  # type: ignore[call-overload]
    assert info.value.status_code == 400
    assert info.value.param == param


def test_body_over_limit_is_413_declared_or_streamed(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    base = start_gateway(make_config(double_url, server={"max_body_bytes": 1000}))
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 2000}]
    with pytest.raises(openai.APIStatusError) as info:
        client(base).chat.completions.create(model="m", messages=big)
    assert info.value.status_code == 413
    assert info.value.code == "payload_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 100

    response = httpx.post(base + "/v1/chat/completions", content=chunked())
    assert response.status_code == 413
    assert envelope(response)["code"] == "payload_too_large"
    ok = client(base).chat.completions.create(model="m", messages=USER)
    assert ok.choices[0].message.content == "double says: hi"


def test_unknown_path_is_404_and_wrong_method_is_405(gateway: str) -> None:
    response = httpx.post(gateway + "/not-an-endpoint", json={})
    assert response.status_code == 404
    assert envelope(response)["code"] == "not_found"
    response = httpx.get(gateway + "/v1/chat/completions")
    assert response.status_code == 405
    assert envelope(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]


def test_unknown_model_is_404_model_not_found(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    config = make_config(
        double_url,
        routes=[{"name": "gpt", "models": ["gpt-*"], "upstream": "double", "policy": "p.yaml"}],
    )
    base = start_gateway(config)
    with pytest.raises(openai.NotFoundError) as info:
        client(base).chat.completions.create(model="claude-x", messages=USER)
    assert info.value.code == "model_not_found"
    ok = client(base).chat.completions.create(model="gpt-4o", messages=USER)
    assert ok.model == "gpt-4o"
