"""The `limits:` section: load-time checks, how a tenant's limits are resolved, and that a
Redis which accepts connections but never answers cannot hang a request."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.config_schema import LimitsConfig
from proxy.limits.spec import Limits, LimitTable
from tests.limits.helpers import CHAT, auth, gateway, limits_config
from tests.proxy.test_config import BASE, load_error


def test_a_limits_tenant_must_exist_in_auth(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        BASE + "limits:\n  tenants:\n    acme: {requests_per_minute: 5}\n"
        "    nobody: {requests_per_minute: 5}\n",
    )
    assert error.key == "limits.tenants.nobody"
    assert "unknown tenant 'nobody'" in str(error)


def test_a_limits_route_must_exist(tmp_path: Path) -> None:
    error = load_error(tmp_path, BASE + "limits:\n  routes:\n    nope: {requests_per_minute: 5}\n")
    assert error.key == "limits.routes.nope"
    assert "unknown route 'nope'" in str(error)


def test_guard_checks_are_per_tenant_only(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, BASE + "limits:\n  routes:\n    kids: {guard_checks_per_minute: 5}\n"
    )
    assert error.key == "limits.routes.kids.guard_checks_per_minute"
    table = LimitTable(
        LimitsConfig.model_validate(
            {"default": {"guard_checks_per_minute": 50}, "tenants": {"acme": {}}}
        )
    )
    [scope] = table.get("acme", "any")
    assert (scope.key, scope.limits, scope.kind) == ("acme#guard", Limits(tokens=50), "guard")
    assert table.counts_guard_checks


def test_tenant_fields_fall_back_to_default_and_zero_means_unlimited() -> None:
    table = LimitTable(
        LimitsConfig.model_validate(
            {
                "default": {"requests_per_minute": 100, "concurrent_requests": 4},
                "tenants": {
                    "acme": {"requests_per_minute": 10},
                    "free": {"requests_per_minute": 0, "concurrent_requests": 0},
                },
                "routes": {"chat": {"tokens_per_minute": 500}, "idle": {}},
            }
        )
    )

    def limits(tenant: str | None, route: str = "other") -> list[tuple[str, Limits]]:
        return [(s.key, s.limits) for s in table.get(tenant, route)]

    assert limits("acme") == [("acme", Limits(requests=10, concurrent=4))]
    assert limits("other") == [("other", Limits(requests=100, concurrent=4))]
    assert limits(None) == [("-", Limits(requests=100, concurrent=4))]  # the open gateway
    assert limits("free") == []
    # A route with limits adds its own counters for each tenant on it.
    assert limits("free", "chat") == [("free@chat", Limits(tokens=500))]
    assert limits("acme", "chat")[1] == ("acme@chat", Limits(tokens=500))
    assert limits("free", "idle") == []
    assert LimitTable(LimitsConfig()).empty


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_redis_that_never_answers_degrades_instead_of_hanging(
    double_url: str, silent_redis: str
) -> None:
    config = limits_config(
        double_url, {"requests_per_minute": 5}, redis_url=silent_redis, redis_timeout_ms=100
    )
    with gateway(config) as gw:
        response = httpx.post(
            gw.url + "/v1/chat/completions", json=CHAT, headers=auth(), timeout=30
        )
        assert response.status_code == 200
        assert response.headers["x-guardline-limits"] == "degraded"
        assert gw.limiter.counts["degraded"] == 1
