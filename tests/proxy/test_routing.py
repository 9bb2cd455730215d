"""Router: prefix splitting, route order, tenant/model filters, wildcards, 404, /v1/models."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config_schema import (
    LiteLLMUpstreamConfig,
    OpenAIUpstreamConfig,
    RouteConfig,
    UpstreamConfig,
)
from proxy.errors import ModelNotFound
from proxy.routing import Router, model_allowed

UPSTREAMS: dict[str, UpstreamConfig] = {
    "openai": OpenAIUpstreamConfig(type="openai", models=["gpt-4o", "gpt-4o-mini", "o3"]),
    "any": OpenAIUpstreamConfig(type="openai", model_alias={"fast": "gpt-4o-mini"}),
    "claude": LiteLLMUpstreamConfig(type="litellm", model="anthropic/claude-sonnet-4-5"),
    "gemini": LiteLLMUpstreamConfig(
        type="litellm", model="gemini/gemini-2.5-pro", models=["gemini-pro"]
    ),
}


def route(name: str, **kw: Any) -> RouteConfig:
    return RouteConfig(name=name, upstream=kw.pop("upstream", "openai"), policy="/p.yaml", **kw)


def make() -> Router:
    return Router(
        [
            route("kids", path_prefix="/kids", models=["gpt-4o-mini"]),
            route("teens", path_prefix="/kids/teens"),
            route("acme-claude", tenants=["acme"], models=["claude-*"], upstream="claude"),
            route("acme", tenants=["acme"], models=["gpt-*"]),
            route("gemini", upstream="gemini"),
            route("default", upstream="any"),
        ],
        UPSTREAMS,
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/kids/v1/chat/completions", ("/kids", "/v1/chat/completions")),
        ("/kids/teens/v1/models", ("/kids/teens", "/v1/models")),
        ("/kids", ("/kids", "/")),
        ("/kidsx/v1/models", ("", "/kidsx/v1/models")),
        ("/v1/models", ("", "/v1/models")),
        ("/unknown/v1/chat/completions", ("", "/unknown/v1/chat/completions")),
    ],
)
def test_split_path_longest_prefix(path: str, expected: tuple[str, str]) -> None:
    assert make().split_path(path) == expected


def test_prefix_selects_route() -> None:
    r = make()
    assert r.match("/kids", None, "gpt-4o-mini").name == "kids"
    assert r.match("/kids/teens", None, "o3").name == "teens"
    assert r.match("", None, "gpt-4o-mini").name == "default"


def test_route_order_and_tenant_filter() -> None:
    r = make()
    assert r.match("", "acme", "claude-sonnet").name == "acme-claude"
    assert r.match("", "acme", "gpt-4o").name == "acme"
    # globex may not use acme's routes; gpt-4o falls through to the catch-all.
    assert r.match("", "globex", "gpt-4o").name == "default"
    assert r.match("", None, "claude-sonnet").name == "default"


def test_model_filters_and_upstream_model_list() -> None:
    r = make()
    # o3 is offered by the "openai" upstream but the acme route only allows gpt-*.
    assert r.match("", "acme", "o3").name == "default"
    # The gemini upstream only accepts its listed model; others fall through.
    assert r.match("", None, "gemini-pro").name == "gemini"
    assert r.match("", None, "gemini-flash").name == "default"


def test_no_match_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as e:
        make().match("/kids", None, "gpt-4o")
    assert e.value.status == 404
    assert e.value.envelope() == {
        "error": {
            "message": "The model `gpt-4o` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    with pytest.raises(ModelNotFound):
        Router([route("a", tenants=["acme"])], UPSTREAMS).match("", None, None)


def test_model_none_matches_first_route_for_prefix_and_tenant() -> None:
    assert make().match("/kids", None, None).name == "kids"
    assert make().match("", "acme", None).name == "acme-claude"


def test_models_for() -> None:
    r = make()
    assert r.models_for("/kids", None) == ["gpt-4o-mini"]
    assert r.models_for("/kids/teens", None) == ["gpt-4o", "gpt-4o-mini", "o3"]
    assert r.models_for("", None) == ["gemini-pro", "fast"]
    # acme-claude's `claude-*` filter hides the litellm id "anthropic/claude-sonnet-4-5";
    # the acme route's `gpt-*` hides o3.
    assert r.models_for("", "acme") == ["gpt-4o", "gpt-4o-mini", "gemini-pro", "fast"]
    claude_only = Router([route("c", upstream="claude")], UPSTREAMS)
    assert claude_only.models_for("", None) == ["anthropic/claude-sonnet-4-5"]
    assert r.models_for("/nowhere", None) == []


def test_model_allowed() -> None:
    assert model_allowed(["gpt-4o"], "gpt-4o")
    assert not model_allowed(["gpt-4o"], "gpt-4o-mini")
    assert model_allowed(["gpt-*"], "gpt-4o-mini")
    assert model_allowed(["*"], "anything")
    assert not model_allowed([], "x")
