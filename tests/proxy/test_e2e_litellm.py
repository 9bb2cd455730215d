"""End to end through a `type: litellm` upstream: openai client -> gateway -> litellm (its real
`openai/<model>` provider) -> the upstream double. Slow to import litellm, so one module."""

from __future__ import annotations

import socket
from collections.abc import Callable

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.config_schema import GatewayConfig
from tests.doubles.litellm_target import LiteLLMTarget, ServerThread
from tests.doubles.upstream import UpstreamDouble
from tests.proxy.conftest import make_config

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:pydantic"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:litellm"),
]

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def litellm_gateway(start_gateway: Callable[[GatewayConfig], str], double_url: str) -> str:
    upstreams = {
        "via_litellm": {
            "type": "litellm",
            "model": "openai/double-model",
            "api_base": double_url,
            "models": ["friendly"],
        }
    }
    routes = [{"name": "lite", "upstream": "via_litellm", "policy": "p.yaml"}]
    return start_gateway(make_config(double_url, upstreams=upstreams, routes=routes))


def test_plain_and_streamed_through_litellm(litellm_gateway: str, double: UpstreamDouble) -> None:
    c = openai.OpenAI(base_url=litellm_gateway + "/v1", api_key="sk-own", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="friendly", messages=USER)
    assert raw.headers["x-guardline-route"] == "lite"
    assert raw.headers["content-type"] == "application/json"
    completion = raw.parse()
    assert completion.choices[0].message.content == "double says: hello"
    sent = double.last()
    assert sent.json()["model"] == "double-model"
    assert sent.headers["authorization"] == "Bearer sk-own"  # open gateway: BYOK

    stream = c.chat.completions.create(
        model="friendly",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "word0 word1 word2 "
    assert any(ch.usage is not None for ch in chunks)

    models = [m.id for m in c.models.list()]
    assert models == ["friendly"]


def test_unreachable_provider_is_502(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    upstreams = {
        "dead": {"type": "litellm", "model": "openai/m", "api_base": f"http://127.0.0.1:{port}/v1"}
    }
    routes = [{"name": "dead", "upstream": "dead", "policy": "p.yaml"}]
    base = start_gateway(make_config(double_url, upstreams=upstreams, routes=routes))
    c = openai.OpenAI(base_url=base + "/v1", api_key="sk-own", max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="openai/m", messages=USER, stream=stream)
        assert info.value.status_code == 502


def test_provider_error_that_echoes_the_key_is_redacted(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    key = "sk-litellm-operator-4f1c9b"
    with ServerThread(LiteLLMTarget().app) as target:
        upstreams = {
            "lite": {
                "type": "litellm",
                "model": "openai/target-model",
                "api_base": target.base_url,
                "api_key": key,
            }
        }
        routes = [{"name": "lite", "upstream": "lite", "policy": "p.yaml"}]
        base = start_gateway(make_config(double_url, upstreams=upstreams, routes=routes))
        c = openai.OpenAI(base_url=base + "/v1", api_key="sk-own", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "echo-auth:400"}]
            )
    assert "Invalid credentials: Bearer [redacted]" in info.value.message
    assert key not in str(info.value.body)
