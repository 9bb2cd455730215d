"""End to end: tenants, bring-your-own-key forwarding, prefix routes and /v1/models."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.config_schema import GatewayConfig
from tests.doubles.upstream import UpstreamDouble
from tests.proxy.conftest import make_config

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def client(base: str, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


def test_open_gateway_forwards_the_clients_key(gateway: str, double: UpstreamDouble) -> None:
    client(gateway, "sk-users-own").chat.completions.create(model="m", messages=USER)
    assert double.last().headers["authorization"] == "Bearer sk-users-own"


def test_upstream_key_replaces_the_clients_key(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    upstreams = {"double": {"type": "openai", "base_url": double_url, "api_key": "sk-upstream"}}
    base = start_gateway(make_config(double_url, upstreams=upstreams))
    client(base, "sk-users-own").chat.completions.create(model="m", messages=USER)
    assert double.last().headers["authorization"] == "Bearer sk-upstream"


@pytest.fixture
def tenant_gateway(start_gateway: Callable[[GatewayConfig], str], double_url: str) -> str:
    digest = hashlib.sha256(b"globex-key").hexdigest()
    config = make_config(
        double_url,
        auth={
            "tenants": {"acme": {"keys": ["acme-key"]}, "globex": {"keys": [f"sha256:{digest}"]}}
        },
        routes=[
            {"name": "kids", "path_prefix": "/kids", "upstream": "double", "policy": "k.yaml"},
            {"name": "acme", "tenants": ["acme"], "upstream": "double", "policy": "a.yaml"},
            {
                "name": "rest",
                "models": ["gpt-4o", "gpt-*"],
                "upstream": "double",
                "policy": "d.yaml",
            },
        ],
    )
    return start_gateway(config)


def test_tenants_need_a_valid_key(tenant_gateway: str, double: UpstreamDouble) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(tenant_gateway, "wrong").chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 401
    response = httpx.post(
        tenant_gateway + "/v1/chat/completions", json={"model": "m", "messages": USER}
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(tenant_gateway + "/v1/models").status_code == 401


def test_tenant_keys_never_reach_the_upstream(tenant_gateway: str, double: UpstreamDouble) -> None:
    raw = client(tenant_gateway, "acme-key").chat.completions.with_raw_response.create(
        model="anything",
        messages=USER,
    )
    assert raw.headers["x-guardline-route"] == "acme"
    assert "authorization" not in double.last().headers


def test_routes_match_on_tenant_model_and_prefix(tenant_gateway: str) -> None:
    globex = client(tenant_gateway, "globex-key")
    raw = globex.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    assert raw.headers["x-guardline-route"] == "rest"
    with pytest.raises(openai.NotFoundError) as info:
        globex.chat.completions.create(model="claude", messages=USER)
    assert info.value.code == "model_not_found"
    kids = openai.OpenAI(base_url=tenant_gateway + "/kids/v1", api_key="globex-key", max_retries=0)
    raw = kids.chat.completions.with_raw_response.create(model="claude", messages=USER)
    assert raw.headers["x-guardline-route"] == "kids"


def test_models_lists_what_the_callers_routes_offer(tenant_gateway: str) -> None:
    assert [m.id for m in client(tenant_gateway, "globex-key").models.list()] == ["gpt-4o"]
    kids = openai.OpenAI(base_url=tenant_gateway + "/kids/v1", api_key="acme-key", max_retries=0)
    page = kids.models.list()
    assert page.object == "list"
    # The kids route takes any model on an upstream without a `models` list: it asks it.
    assert [m.id for m in page] == ["double-model"]


def test_open_route_lists_the_upstreams_models_with_the_clients_key(
    gateway: str, double: UpstreamDouble
) -> None:
    c = client(gateway, "sk-users-own")
    assert [m.id for m in c.models.list()] == ["double-model"]
    assert double.last().path == "/v1/models"
    assert double.last().headers["authorization"] == "Bearer sk-users-own"
    with pytest.raises(openai.AuthenticationError):  # the upstream's own 401, passed through
        c.models.list(extra_headers={"x-double-status": "401"})


def test_models_from_upstream_lists_and_aliases(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    upstreams = {
        "double": {
            "type": "openai",
            "base_url": double_url,
            "models": ["double-model"],
            "model_alias": {"friendly": "double-model"},
        }
    }
    base = start_gateway(make_config(double_url, upstreams=upstreams))
    c = client(base)
    assert sorted(m.id for m in c.models.list()) == ["double-model", "friendly"]
    c.chat.completions.create(model="friendly", messages=USER, extra_body={"keep": 1})
    sent = double.last().json()
    assert sent["model"] == "double-model"
    assert sent["keep"] == 1
