"""End to end: a client that leaves before the answer is recorded as 499 (client closed
request) in the request log and the request metrics, not as a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.observability.wiring_gateway import TENANT_KEY, metric_value, wait_for


async def test_client_that_disconnects_is_recorded_as_499(start: Any) -> None:
    gw = start()
    headers = {
        "authorization": f"Bearer {TENANT_KEY}",
        "x-double-id": "closed-499",
        "x-double-delay-ms": "30000",  # the upstream keeps the request waiting
    }
    body = {"model": "m", "messages": [{"role": "user", "content": "tell me about tides"}]}
    async with httpx.AsyncClient() as client:
        request = asyncio.ensure_future(
            client.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers)
        )
        # Leave once the gateway is waiting on the upstream (no timing involved).
        await asyncio.to_thread(
            wait_for,
            lambda: any(r.headers.get("x-double-id") == "closed-499" for r in gw.upstream.received),
            "the upstream call",
        )
        request.cancel()
    assert await asyncio.to_thread(gw.upstream.wait_disconnect, "closed-499")

    await asyncio.to_thread(wait_for, lambda: gw.request_lines(), "the request log line")
    (line,) = gw.request_lines()
    assert line["status"] == 499
    metrics = await asyncio.to_thread(gw.metrics)
    assert metric_value(metrics, "guardline_requests_total", status="499") == 1
    assert metric_value(metrics, "guardline_requests_total", status="500") == 0
