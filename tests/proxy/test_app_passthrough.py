"""The app with injected upstream transports (httpx.MockTransport): what goes out and back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from proxy.app import create_app
from proxy.chat_call import ChatCall
from proxy.config_schema import GatewayConfig
from proxy.forward import forward_chat
from proxy.state import GatewayState
from proxy.upstreams.reply import UpstreamReply

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
Handler = Callable[[httpx.Request], httpx.Response]


def config(**upstream: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "upstreams": {
                "up": {"type": "openai", "base_url": "http://upstream.test/v1", **upstream}
            },
            "routes": [{"name": "r", "upstream": "up", "policy": "p.yaml"}],
        }
    )


@asynccontextmanager
async def gateway(
    handler: Handler, cfg: GatewayConfig | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayState]]:
    app = create_app(
        cfg or config(), transports={"up": httpx.MockTransport(handler)}, moderation=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, app.state.gateway


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"id": "x"})


async def test_request_goes_out_with_original_bytes_and_client_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(request)

    async with gateway(handler) as (client, _):
        response = await client.post(
            "/v1/chat/completions",
            content=BODY,
            headers={
                "authorization": "Bearer sk-own",
                "x-custom": "1",
                "connection": "keep-alive",
                "te": "trailers",
                "accept-encoding": "gzip",
            },
        )
    assert response.status_code == 200
    (request,) = seen
    assert str(request.url) == "http://upstream.test/v1/chat/completions"
    assert request.content == BODY
    assert request.headers["authorization"] == "Bearer sk-own"  # open gateway: BYOK
    assert request.headers["x-custom"] == "1"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["host"] == "upstream.test"
    assert "te" not in request.headers


async def test_configured_key_and_alias() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(request)

    cfg = config(api_key="sk-up", model_alias={"m": "real-model"})
    async with gateway(handler, cfg) as (client, _):
        await client.post(
            "/v1/chat/completions", content=BODY, headers={"authorization": "Bearer sk-own"}
        )
    assert seen[0].headers["authorization"] == "Bearer sk-up"
    assert orjson.loads(seen[0].content)["model"] == "real-model"


async def test_response_status_body_and_headers_relayed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            418,
            content=b'{"error": {"message": "teapot"}}  ',
            headers={
                "content-type": "application/json; charset=utf-8",
                "x-request-id": "req_1",
                "openai-processing-ms": "12",
                "keep-alive": "timeout=5",
            },
        )

    async with gateway(handler) as (client, _):
        response = await client.post("/v1/chat/completions", content=BODY)
    assert response.status_code == 418
    assert response.content == b'{"error": {"message": "teapot"}}  '
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["x-request-id"] == "req_1"
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["x-guardline-route"] == "r"
    assert "keep-alive" not in response.headers


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (httpx.ConnectError("refused"), 502, "upstream_unreachable"),
        (httpx.RemoteProtocolError("bad"), 502, "upstream_unreachable"),
        (httpx.ConnectTimeout("slow"), 504, "upstream_timeout"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
        (httpx.PoolTimeout("busy"), 504, "upstream_timeout"),
    ],
)
async def test_transport_errors_become_502_or_504(
    exc: httpx.HTTPError, status: int, code: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with gateway(handler) as (client, _):
        response = await client.post("/v1/chat/completions", content=BODY)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "upstream_error"


class BreakingStream(httpx.AsyncByteStream):
    """SSE bytes split mid-event, then a broken connection."""

    def __init__(self, parts: list[bytes], error: Exception | None) -> None:
        self.parts = parts
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.error is not None:
            raise self.error


def sse(parts: list[bytes], error: Exception | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=BreakingStream(parts, error),
        )

    return handler


async def test_stream_bytes_relayed_whole_even_when_split_mid_event() -> None:
    parts = [b'data: {"a"', b":1}\n", b'\ndata: {"b":2}\n\ndata: [DO', b"NE]\n\n"]
    async with gateway(sse(parts)) as (client, _):
        response = await client.post("/v1/chat/completions", content=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content == b"".join(parts)


async def test_stream_broken_mid_event_ends_with_one_error_event() -> None:
    parts = [b'data: {"a":1}\n\ndata: {"b"']
    async with gateway(sse(parts, httpx.ReadError("reset"))) as (client, _):
        response = await client.post("/v1/chat/completions", content=BODY)
    events = response.content.split(b"\n\n")
    assert events[0] == b'data: {"a":1}'
    error = orjson.loads(events[1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_unreachable"
    assert events[2:] == [b""]  # nothing after it, and the half event was never sent


async def test_chat_service_can_be_wrapped() -> None:
    async with gateway(ok) as (client, state):

        async def wrapped(state: GatewayState, call: ChatCall) -> UpstreamReply:
            reply = await forward_chat(state, call)
            reply.headers.append((b"x-wrapped", call.route.name.encode()))
            return reply

        state.chat_service = wrapped
        response = await client.post("/v1/chat/completions", content=BODY)
    assert response.headers["x-wrapped"] == "r"


async def test_unexpected_exception_is_a_500_envelope_without_details() -> None:
    async with gateway(ok) as (client, state):

        async def broken(state: GatewayState, call: ChatCall) -> UpstreamReply:
            raise RuntimeError("secret internals")

        state.chat_service = broken
        response = await client.post("/v1/chat/completions", content=BODY)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert "secret" not in response.text
    assert response.headers["x-guardline-request-id"]


async def test_readiness_probes_are_extensible() -> None:
    async with gateway(ok) as (client, state):
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["config"]["routes"] == ["r"]

        async def guard_down() -> tuple[bool, dict[str, Any]]:
            return False, {"guards": {"local": "loading"}}

        state.readiness.append(guard_down)
        not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["guards"] == {"local": "loading"}
    assert not_ready.json()["status"] == "not_ready"


async def test_declared_body_over_limit_is_refused_before_reading() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return ok(request)

    cfg = config().model_copy(
        update={"server": config().server.model_copy(update={"max_body_bytes": 10})}
    )
    async with gateway(handler, cfg) as (client, _):
        response = await client.post("/v1/chat/completions", content=BODY)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert calls == []
