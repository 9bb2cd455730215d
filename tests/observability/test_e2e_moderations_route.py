"""End to end: /v1/moderations requests carry their route in metrics (not `unmatched`)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.observability.wiring_gateway import TENANT_KEY


def test_moderations_requests_are_logged_and_counted_with_their_route(start: Any) -> None:
    gw = start()
    r = httpx.post(
        f"{gw.url}/v1/moderations",
        json={"input": "hello"},
        headers={"authorization": f"Bearer {TENANT_KEY}"},
    )
    assert r.status_code == 200
    text = httpx.get(f"{gw.url}/metrics").text
    assert 'guardline_requests_total{route="main",status="200"} 1.0' in text
