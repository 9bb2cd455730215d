"""A gateway with limits in front of the upstream double, and ways to wait for its releases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from proxy.app import create_app
from proxy.config_schema import GatewayConfig
from proxy.limits.service import LimitedChatService, Limiter
from proxy.state import GatewayState
from tests.conftest_servers import run_server

KEYS = {"acme": "sk-acme-key", "other": "sk-other-key"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def limits_config(double_url: str, acme: dict[str, Any], **limits: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "upstreams": {
                "double": {"type": "openai", "base_url": double_url, "api_key": "sk-upstream"}
            },
            "routes": [
                {
                    "name": "default",
                    "upstream": "double",
                    "policy": "policies/default.yaml",
                    "forward_headers": ["x-double-*"],
                }
            ],
            "auth": {"tenants": {name: {"keys": [key]} for name, key in KEYS.items()}},
            "limits": {"tenants": {"acme": acme}, **limits},
        }
    )


def auth(tenant: str = "acme") -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


@dataclass
class Running:
    url: str
    app: Starlette

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    @property
    def limiter(self) -> Limiter:
        service = self.state.chat_service
        assert isinstance(service, LimitedChatService)
        return service.limiter

    def settle(self) -> None:
        """Wait until every admitted request has released (tokens, lease): the release runs
        just after the response's last byte was sent, which the client may see first."""
        deadline = time.monotonic() + 10
        while self.limiter.open:
            assert time.monotonic() < deadline, "releases did not finish"
            time.sleep(0.005)


@contextmanager
def gateway(config: GatewayConfig) -> Iterator[Running]:
    app = create_app(config, moderation=False)
    with run_server(app) as url:
        yield Running(url, app)
