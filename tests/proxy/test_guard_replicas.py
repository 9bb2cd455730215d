"""config.yaml `base_urls`: one sglang guard served by several replicas through the gateway.
Both replicas serve checks; with one killed every request still succeeds; /readyz shows each
endpoint's health and stays ready while one is alive. `base_url` and `base_urls` exclude each
other."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from proxy.app import create_app
from proxy.config import load_config
from proxy.config_schema import SGLangGuardConfig
from tests.conftest_servers import run_server
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double


@pytest.fixture
def replicas() -> Iterator[list[tuple[str, SGLangDouble]]]:
    with ExitStack() as stack:
        yield [stack.enter_context(start_sglang_double()) for _ in range(2)]


def _config(tmp_path: Path, double_url: str, urls: list[str]) -> Path:
    (tmp_path / "checked.yaml").write_text(
        yaml.safe_dump({"name": "checked", "description": "d", "on_guard_error": "closed"})
    )
    config: dict[str, Any] = {
        "default_guard": "nemotron",
        "guards": {"nemotron": {"type": "sglang", "base_urls": urls}},
        "upstreams": {"double": {"type": "openai", "base_url": double_url, "api_key": "sk-up"}},
        "routes": [{"name": "default", "upstream": "double", "policy": "checked.yaml"}],
        "audit": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_replicas_share_the_checks_and_one_dead_fails_no_request(
    tmp_path: Path, double_url: str, replicas: list[tuple[str, SGLangDouble]]
) -> None:
    urls = [url for url, _ in replicas]
    app = create_app(load_config(_config(tmp_path, double_url, urls), env={}), moderation=True)
    with run_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:

        def chat(i: int) -> httpx.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
            return client.post("/v1/chat/completions", json=body)

        for i in range(10):
            assert chat(i).headers["x-guardline-input"] == "safe"
        assert [len(rec.requests) for _, rec in replicas] == [10, 10]  # input + output each

        ready = client.get("/readyz")
        assert ready.status_code == 200
        guard = ready.json()["checks"]["guards"]["nemotron"]
        assert guard["ok"] is True and guard["detail"] == "2/2 endpoints healthy"
        assert [e["ok"] for e in guard["endpoints"].values()] == [True, True]

        replicas[0][1].kill()
        for i in range(10, 30):
            response = chat(i)
            assert response.status_code == 200, response.text
            assert response.headers["x-guardline-input"] == "safe"
        assert len(replicas[1][1].requests) == 10 + 40

        ready = client.get("/readyz")
        assert ready.status_code == 200  # one endpoint alive: still serving
        guard = ready.json()["checks"]["guards"]["nemotron"]
        assert guard["detail"] == "1/2 endpoints healthy"
        dead = guard["endpoints"][urls[0]]
        assert dead["ok"] is False and "breaker open" in dead["detail"]
        alive = guard["endpoints"][urls[1]]
        assert alive == {"ok": True, "detail": "health HTTP 200; breaker closed"}
        # The breaker gauge has one series per endpoint.
        metrics = client.get("/metrics").text
        assert f'guardline_breaker_state{{guard="nemotron@{urls[0]}"}} 2.0' in metrics
        assert f'guardline_breaker_state{{guard="nemotron@{urls[1]}"}} 0.0' in metrics

        replicas[1][1].kill()
        assert client.get("/readyz").status_code == 503
        refused = chat(99)
        assert refused.status_code == 503  # on_guard_error: closed
        assert refused.json()["error"]["code"] == "guard_unavailable"


@pytest.mark.parametrize(
    "addresses",
    [{}, {"base_url": "http://a:1", "base_urls": ["http://b:1"]}, {"base_urls": []}],
)
def test_exactly_one_of_base_url_and_base_urls(addresses: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SGLangGuardConfig.model_validate({"type": "sglang", **addresses})


def test_base_url_alone_still_works() -> None:
    assert SGLangGuardConfig(type="sglang", base_url="http://g:30000").urls == ["http://g:30000"]
