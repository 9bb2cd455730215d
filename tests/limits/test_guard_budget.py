"""A tenant's guard-check budget: the moderated gateway counts the guard calls each request
makes (input and output checks; verdict-cache hits are free) and refuses the tenant's next
requests once the minute's budget is spent, before any guard call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.app import create_app
from proxy.config import load_config
from tests.conftest_servers import run_server
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.limits.helpers import KEYS, auth


@pytest.fixture
def guard() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double() as (url, rec):
        yield url, rec


def test_guard_checks_per_minute_refuses_once_spent(
    tmp_path: Path, double_url: str, guard: tuple[str, SGLangDouble]
) -> None:
    guard_url, rec = guard
    (tmp_path / "checked.yaml").write_text(
        yaml.safe_dump({"name": "checked", "description": "input and output checks"})
    )
    config = {
        "default_guard": "nemotron",
        "guards": {"nemotron": {"type": "sglang", "base_url": guard_url}},
        "upstreams": {"double": {"type": "openai", "base_url": double_url, "api_key": "sk-up"}},
        "routes": [{"name": "default", "upstream": "double", "policy": "checked.yaml"}],
        "auth": {"tenants": {name: {"keys": [key]} for name, key in KEYS.items()}},
        "limits": {"tenants": {"acme": {"guard_checks_per_minute": 3}}},
        "audit": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    app = create_app(load_config(path, env={}), moderation=True)
    with run_server(app) as url:

        def post(text: str, tenant: str = "acme") -> httpx.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": text}]}
            return httpx.post(
                url + "/v1/chat/completions", json=body, headers=auth(tenant), timeout=30
            )

        limiter = app.state.gateway.chat_service.limiter

        def settle() -> None:  # the release runs just after the last byte was sent
            deadline = time.monotonic() + 10
            while limiter.open:
                assert time.monotonic() < deadline
                time.sleep(0.005)

        assert post("first question").status_code == 200  # input + output check: 2 of 3
        assert len(rec.requests) == 2
        assert post("first question").status_code == 200  # both verdicts cached: free
        assert len(rec.requests) == 2
        assert post("second question").status_code == 200  # 2 < 3: admitted, now 4
        assert len(rec.requests) == 4
        settle()
        refused = post("third question")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "guard_checks")
        assert "guard checks per min: Limit 3, Used 4" in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert len(rec.requests) == 4  # refused before any guard call
        assert limiter.counts["rejected_guard_checks"] == 1
        assert post("third question", "other").status_code == 200  # other tenants unaffected
