"""End to end: which client headers reach an upstream called with the operator's key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from guard_engine.errors import ConfigFileError
from proxy.config_schema import GatewayConfig
from tests.doubles.upstream import UpstreamDouble
from tests.proxy.conftest import make_config

STEERING = {
    "cookie": "session=tenant",
    "openai-organization": "org-tenant",
    "openai-project": "proj-tenant",
    "x-custom-flag": "1",
}
HARMLESS = {
    "openai-beta": "assistants=v2",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "vendor=1",
    "baggage": "k=v",
    "idempotency-key": "idem-1",
    "accept": "application/json",
}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _keyed(double_url: str, **route: Any) -> GatewayConfig:
    upstreams = {"double": {"type": "openai", "base_url": double_url, "api_key": "sk-operator"}}
    routes = [{"name": "default", "upstream": "double", "policy": "p.yaml", **route}]
    return make_config(double_url, upstreams=upstreams, routes=routes)


def test_operator_keyed_upstream_gets_only_allowed_headers(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_gateway(_keyed(double_url))
    r = httpx.post(base + "/v1/chat/completions", json=BODY, headers={**STEERING, **HARMLESS})
    assert r.status_code == 200
    got = double.last().headers
    for name in STEERING:
        assert name not in got, name
    for name, value in HARMLESS.items():
        assert got[name] == value, name
    assert got["authorization"] == "Bearer sk-operator"


def test_official_sdk_headers_pass_and_organization_does_not(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_gateway(_keyed(double_url))
    client = openai.OpenAI(
        base_url=base + "/v1",
        api_key="sk-client",
        organization="org-tenant",
        project="proj-tenant",
        max_retries=0,
    )
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    got = double.last().headers
    assert "openai-organization" not in got and "openai-project" not in got
    assert got["x-stainless-lang"] == "python"
    assert got["user-agent"].startswith("OpenAI/Python")


def test_a_route_opts_in_to_extra_headers(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_gateway(_keyed(double_url, forward_headers=["OpenAI-Organization", "x-custom-*"]))
    r = httpx.post(base + "/v1/chat/completions", json=BODY, headers=STEERING)
    assert r.status_code == 200
    got = double.last().headers
    assert got["openai-organization"] == "org-tenant"
    assert got["x-custom-flag"] == "1"
    assert "cookie" not in got and "openai-project" not in got


def test_bring_your_own_key_forwards_the_clients_headers(
    gateway: str, double: UpstreamDouble
) -> None:
    r = httpx.post(
        gateway + "/v1/chat/completions",
        json=BODY,
        headers={**STEERING, "authorization": "Bearer sk-own"},
    )
    assert r.status_code == 200
    got = double.last().headers
    for name, value in STEERING.items():
        assert got[name] == value, name


def test_models_listing_with_the_operators_key_drops_steering_headers(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_gateway(_keyed(double_url))
    r = httpx.get(base + "/v1/models", headers=STEERING)
    assert r.status_code == 200
    got = double.last().headers
    assert double.last().path == "/v1/models"
    assert "openai-organization" not in got and "cookie" not in got


@pytest.mark.parametrize("entry", ["authorization", "Host", "auth*", "bad header", ""])
def test_forward_headers_refuses_credentials_and_non_names(tmp_path: Any, entry: str) -> None:
    from proxy.config import load_config

    (tmp_path / "p.yaml").write_text("x")
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: {u: {type: openai, api_key: k}}\n"
        "routes:\n"
        f"  - {{name: r, upstream: u, policy: p.yaml, forward_headers: ['{entry}']}}\n"
    )
    with pytest.raises(ConfigFileError, match="forward_headers"):
        load_config(path, env={})
