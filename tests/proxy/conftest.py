"""Fixtures for the gateway's tests: the upstream double on a real server, and a factory that
starts the real gateway (uvicorn, uvloop, httptools) for a given config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config_schema import GatewayConfig
from tests.conftest_servers import run_server
from tests.doubles.upstream import UpstreamDouble

GatewayFactory = Callable[..., str]


@pytest.fixture(scope="module")
def double_server() -> Iterator[tuple[UpstreamDouble, str]]:
    double = UpstreamDouble()
    with run_server(double) as url:
        yield double, url


@pytest.fixture
def double(double_server: tuple[UpstreamDouble, str]) -> UpstreamDouble:
    return double_server[0]


@pytest.fixture
def double_url(double_server: tuple[UpstreamDouble, str]) -> str:
    return double_server[1] + "/v1"


def make_config(double_url: str, **overrides: Any) -> GatewayConfig:
    """A config whose single `default` route goes to the double (open, BYOK) unless overridden."""
    raw: dict[str, Any] = {
        "upstreams": {"double": {"type": "openai", "base_url": double_url}},
        "routes": [{"name": "default", "upstream": "double", "policy": "policies/default.yaml"}],
    }
    raw.update(overrides)
    return GatewayConfig.model_validate(raw)


@pytest.fixture
def start_gateway() -> Iterator[Callable[[GatewayConfig], str]]:
    """Start a gateway for a config; returns its base URL. All are stopped after the test.

    These are the gateway core's tests: the bare passthrough, without moderation (the
    moderated gateway is tested end to end in tests/moderation/).
    """
    with ExitStack() as stack:

        def start(config: GatewayConfig) -> str:
            return stack.enter_context(run_server(create_app(config, moderation=False)))

        yield start


@pytest.fixture(scope="module")
def gateway(double_server: tuple[UpstreamDouble, str]) -> Iterator[str]:
    """The default open gateway in front of the double; its base URL (without /v1).

    One per test module: it keeps no per-test state (the double records what it received).
    """
    app = create_app(make_config(double_server[1] + "/v1"), moderation=False)
    with run_server(app) as url:
        yield url
