"""End to end: `server.admin_key` restricts /metrics and /readyz's details; probes still read
/readyz's status code."""

from __future__ import annotations

from typing import Any

import httpx

from tests.observability.wiring_gateway import TENANT_KEY

ADMIN_KEY = "gl-admin-7f3e9a2b41"


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_metrics_need_the_admin_key(start: Any) -> None:
    gw = start(config={"server": {"admin_key": ADMIN_KEY}})
    for headers in ({}, _bearer("wrong"), _bearer(TENANT_KEY), {"authorization": ADMIN_KEY}):
        r = httpx.get(f"{gw.url}/metrics", headers=headers)
        assert r.status_code == 401, headers
        error = r.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert ADMIN_KEY not in r.text
    r = httpx.get(f"{gw.url}/metrics", headers=_bearer(ADMIN_KEY))
    assert r.status_code == 200
    assert "# TYPE guardline_requests_total counter" in r.text


def test_readyz_keeps_its_status_and_hides_details_without_the_admin_key(start: Any) -> None:
    gw = start(config={"server": {"admin_key": ADMIN_KEY}})
    r = httpx.get(f"{gw.url}/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}
    r = httpx.get(f"{gw.url}/readyz", headers=_bearer(TENANT_KEY))
    assert r.json() == {"status": "ready"}
    detailed = httpx.get(f"{gw.url}/readyz", headers=_bearer(ADMIN_KEY)).json()
    assert detailed["status"] == "ready"
    assert detailed["checks"]["config"]["routes"] == ["main"]
    assert set(detailed["checks"]) > {"config", "upstreams"}


def test_without_an_admin_key_both_stay_open(start: Any) -> None:
    gw = start()
    assert httpx.get(f"{gw.url}/metrics").status_code == 200
    assert "checks" in httpx.get(f"{gw.url}/readyz").json()
