"""The rest of the OpenAI API through the real gateway (bare, no guard): every other /v1/
endpoint is relayed byte for byte under its route's rule, or refused (proxy.endpoints).

The official `openai` client talks to the gateway; the upstream double parses what it
received (multipart with the boundary it was sent) and reports hashes, so "byte for byte" is
checked against the exact bytes the client put on the wire.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from guard_engine.errors import ConfigFileError
from proxy.config import load_config
from proxy.config_schema import GatewayConfig
from tests.doubles.endpoints import GATED_FILE, STREAMED_UPLOAD
from tests.doubles.upstream import UpstreamDouble
from tests.proxy.conftest import make_config

PASS_ALL = {"/v1/audio/*": "pass", "/v1/files*": "pass"}


def wav_bytes(seconds: float = 0.25, rate: int = 8000) -> bytes:
    """A small real WAV file: a 440 Hz tone, 16-bit mono."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Wire:
    """An httpx client for the openai SDK that keeps the request bodies it sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.client = httpx.Client(event_hooks={"request": [self._keep]})

    def _keep(self, request: httpx.Request) -> None:
        self.bodies.append(request.read())


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.client.close()


def sdk(base: str, wire: Wire | None = None, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base}{prefix}/v1",
        api_key="sk-test",
        max_retries=0,
        http_client=wire.client if wire is not None else None,
    )


def start_with(start_gateway: Callable[[GatewayConfig], str], double_url: str, **route: Any) -> str:
    routes = [{"name": "default", "upstream": "double", "policy": "p.yaml", **route}]
    return start_gateway(make_config(double_url, routes=routes))


def test_audio_transcription_multipart_is_relayed_byte_for_byte(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, wire: Wire
) -> None:
    base = start_with(start_gateway, double_url, endpoints=PASS_ALL)
    audio = wav_bytes()
    raw = sdk(base, wire).audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("tone.wav", audio, "audio/wav")
    )
    assert raw.headers["x-guardline-input"] == "unchecked"
    assert raw.headers["x-guardline-route"] == "default"
    result = raw.parse()
    assert result.text == f"double heard {len(audio)} bytes"
    double = (result.model_extra or {})["x_double"]
    # The whole multipart body the SDK sent arrived unchanged, and parses with the boundary
    # of the content-type header that arrived with it.
    assert double["body_sha256"] == sha256(wire.bodies[-1])
    part = double["parts"]["file"]
    assert part["sha256"] == sha256(audio)
    assert part["filename"] == "tone.wav"
    assert part["content_type"] == "audio/wav"
    assert double["parts"]["model"]["value"] == "whisper-1"


def test_file_upload_download_list_delete(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, wire: Wire
) -> None:
    base = start_with(start_gateway, double_url, endpoints=PASS_ALL)
    client = sdk(base, wire)
    data = b'{"prompt": "a", "completion": "b"}\n' * 30000 + bytes(range(256))  # ~1 MiB
    uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert uploaded.bytes == len(data)
    assert uploaded.filename == "train.jsonl"
    assert uploaded.purpose == "fine-tune"
    double = (uploaded.model_extra or {})["x_double"]
    assert double["body_sha256"] == sha256(wire.bodies[-1])
    assert double["parts"]["file"]["sha256"] == sha256(data)
    # The download streams back through the gateway with the upstream's length.
    content = client.files.with_raw_response.content(uploaded.id)
    assert content.headers["content-length"] == str(len(data))
    assert content.content == data
    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError) as caught:  # the upstream's own 404 passes through
        client.files.content(uploaded.id)
    assert "No such File object: file-double1" in caught.value.message


def test_chunked_upload_without_content_length_is_relayed(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_with(start_gateway, double_url, endpoints=PASS_ALL)
    boundary = "b0undary"
    payload = bytes(range(256)) * 2400  # 600 KiB: several pieces, each chunk-framed
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="x.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def pieces() -> Iterator[bytes]:  # no content-length: the client sends it chunked
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = httpx.post(
        base + "/v1/files",
        content=pieces(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    assert double.last().body == body
    assert response.json()["x_double"]["parts"]["file"]["sha256"] == sha256(payload)


def test_default_rules_deny_what_cannot_be_checked(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_with(start_gateway, double_url)
    before = len(double.received)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(base).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes()))
    error = caught.value
    assert error.status_code == 403
    assert error.code == "endpoint_not_allowed"
    assert error.type == "permission_error"
    assert error.response.json() == {
        "error": {
            "message": "POST /v1/audio/transcriptions is not allowed on this gateway (route "
            "'default').",
            "type": "permission_error",
            "param": None,
            "code": "endpoint_not_allowed",
        }
    }
    assert error.response.headers["x-guardline-route"] == "default"
    for method, path in (("GET", "/v1/files"), ("DELETE", "/v1/vector_stores/vs_1")):
        response = httpx.request(method, base + path)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "endpoint_not_allowed"
    assert len(double.received) == before  # nothing reached the upstream
    # The bare gateway has no guard: `check` endpoints are relayed, marked unchecked.
    raw = sdk(base).embeddings.with_raw_response.create(model="e", input="hello")
    assert raw.headers["x-guardline-input"] == "unchecked"
    assert raw.parse().data[0].embedding == [0.25, -0.5, 0.125]


def test_a_deny_rule_and_the_most_specific_pattern(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    endpoints = {"*": "pass", "/v1/embeddings": "deny", "/v1/files/*": "deny"}
    base = start_with(start_gateway, double_url, endpoints=endpoints)
    client = sdk(base)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.embeddings.create(model="e", input="hello")
    assert caught.value.code == "endpoint_not_allowed"
    assert client.files.list().data is not None  # "/v1/files" itself falls to "*": pass
    with pytest.raises(openai.PermissionDeniedError):
        client.files.delete("file-1")
    # "*: pass" also passes image generation unchecked, as the operator asked.
    raw = client.images.with_raw_response.generate(prompt="a red apple", model="gpt-image-1")
    assert raw.headers["x-guardline-input"] == "unchecked"
    assert raw.parse().data is not None


def test_routes_by_prefix_tenant_and_model(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    config = make_config(
        double_url,
        auth={"tenants": {"acme": {"keys": ["k-acme"]}}},
        upstreams={"double": {"type": "openai", "base_url": double_url, "api_key": "sk-up"}},
        routes=[
            {"name": "kids", "path_prefix": "/kids", "upstream": "double", "policy": "p.yaml"},
            {
                "name": "embed-pass",
                "models": ["text-embedding-*"],
                "upstream": "double",
                "policy": "p.yaml",
                "endpoints": {"/v1/embeddings": "pass"},
            },
            {
                "name": "default",
                "upstream": "double",
                "policy": "p.yaml",
                "endpoints": {"/v1/files*": "pass"},
            },
        ],
    )
    base = start_gateway(config)
    headers = {"authorization": "Bearer k-acme"}
    assert httpx.get(base + "/v1/files").status_code == 401
    # No model in the request: the first route for the prefix and tenant decides (as for
    # /v1/moderations), here the model-filtered one, which does not pass files.
    response = httpx.get(base + "/v1/files", headers=headers)
    assert (response.status_code, response.headers["x-guardline-route"]) == (403, "embed-pass")
    response = httpx.get(base + "/kids/v1/files", headers=headers)
    assert (response.status_code, response.headers["x-guardline-route"]) == (403, "kids")
    # The embeddings body names the model: the route that offers it decides.
    body = {"model": "text-embedding-3-small", "input": "hi"}
    response = httpx.post(base + "/v1/embeddings", json=body, headers=headers)
    assert (response.status_code, response.headers["x-guardline-route"]) == (200, "embed-pass")
    assert double.last().headers["authorization"] == "Bearer sk-up"  # never the tenant's key
    body = {"model": "other-embedder", "input": "hi"}
    response = httpx.post(base + "/v1/embeddings", json=body, headers=headers)
    assert (response.status_code, response.headers["x-guardline-route"]) == (200, "default")


def test_explicit_endpoints_keep_405_and_unknown_prefixes_404(gateway: str) -> None:
    response = httpx.get(gateway + "/v1/moderations")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert httpx.post(gateway + "/v1/models").status_code == 405
    assert httpx.get(gateway + "/v1/models").status_code == 200
    assert httpx.get(gateway + "/other/v1/files").status_code == 404
    assert httpx.head(gateway + "/v1/files").status_code == 405


def test_endpoint_rules_are_checked_at_load_time(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("name: p\ndescription: d\n")
    cases = {
        "{'/v1/audio/*': check}": "'check' needs an endpoint whose input the guard reads",
        "{'audio/*': pass}": "must start with '/v1/'",
        "{'/v1/*/x': pass}": "only allowed at the end",
        "{'/v1/files': allow}": "routes[0].endpoints./v1/files",
    }
    for endpoints, message in cases.items():
        path = tmp_path / "config.yaml"
        path.write_text(
            "upstreams: {double: {type: openai}}\n"
            "routes:\n"
            f"  - {{name: r, upstream: double, policy: p.yaml, endpoints: {endpoints}}}\n"
        )
        with pytest.raises(ConfigFileError) as caught:
            load_config(path, env={})
        assert message in str(caught.value), str(caught.value)
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: {ll: {type: litellm, model: anthropic/claude}}\n"
        "routes:\n"
        "  - {name: r, upstream: ll, policy: p.yaml, endpoints: {'/v1/files*': pass}}\n"
    )
    with pytest.raises(ConfigFileError) as caught:
        load_config(path, env={})
    assert "can only be 'deny'" in str(caught.value)


def test_streamed_upload_over_the_body_limit_is_a_413(
    start_gateway: Callable[[GatewayConfig], str], double_url: str
) -> None:
    routes = [{"name": "default", "upstream": "double", "policy": "p.yaml", "endpoints": PASS_ALL}]
    base = start_gateway(make_config(double_url, routes=routes, server={"max_body_bytes": 300_000}))

    def pieces() -> Iterator[bytes]:  # chunked: the limit is found while relaying
        for _ in range(40):
            yield b"x" * 10_000

    for content in (b"x" * 400_000, pieces()):
        response = httpx.post(
            base + "/v1/files",
            content=content,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    assert httpx.get(base + "/v1/files").status_code == 200  # the gateway still serves


def test_answers_stream_through_as_they_arrive(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_with(start_gateway, double_url, endpoints=PASS_ALL)
    double.endpoints.gate.clear()
    url = base + f"/v1/files/{GATED_FILE}/content"
    with httpx.stream("GET", url, timeout=30) as response:
        parts = response.iter_raw()
        # The upstream holds its second part back until the first one reached this client.
        first = next(parts)
        double.endpoints.gate.set()
        rest = b"".join(parts)
    assert first == b"first part;"
    assert rest == b"second part"


def test_a_client_leaving_mid_answer_closes_the_upstream_at_once(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_with(start_gateway, double_url, endpoints=PASS_ALL)
    double.endpoints.gate.clear()
    double.endpoints.gone.clear()
    try:
        with httpx.stream("GET", base + f"/v1/files/{GATED_FILE}/content") as response:
            assert next(response.iter_raw()) == b"first part;"
        # The client closed its connection while the upstream still had more to send.
        assert double.endpoints.gone.wait(10)
    finally:
        double.endpoints.gate.set()  # release the double's waiting thread


def test_an_upload_streams_to_the_upstream_as_it_arrives(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    base = start_with(start_gateway, double_url, endpoints={"/v1/uploads/*": "pass"})
    double.endpoints.first_piece.clear()
    first, second = b"a" * 300_000, b"b" * 300_000
    seen_before_the_rest: list[bool] = []

    def pieces() -> Iterator[bytes]:
        yield first
        # The upstream has the first 256 KiB while the client has not sent the rest.
        seen_before_the_rest.append(double.endpoints.first_piece.wait(10))
        yield second

    response = httpx.post(
        base + STREAMED_UPLOAD,
        content=pieces(),
        headers={"content-type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert seen_before_the_rest == [True]
    assert response.json()["bytes"] == len(first) + len(second)
    assert response.json()["x_double"]["sha256"] == sha256(first + second)


def test_a_litellm_route_serves_chat_only(start_gateway: Callable[[GatewayConfig], str]) -> None:
    config = GatewayConfig.model_validate(
        {
            "upstreams": {"ll": {"type": "litellm", "model": "anthropic/claude-x"}},
            "routes": [{"name": "ll", "upstream": "ll", "policy": "p.yaml"}],
        }
    )
    base = start_gateway(config)
    response = httpx.post(base + "/v1/embeddings", json={"model": "e", "input": "hi"})
    assert response.status_code == 404  # checkable by default, but nobody to relay it to
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["x-guardline-route"] == "ll"
    assert httpx.get(base + "/v1/files").status_code == 403  # denied by default


def test_path_and_query_arrive_as_the_client_wrote_them(
    start_gateway: Callable[[GatewayConfig], str], double_url: str, double: UpstreamDouble
) -> None:
    config = make_config(
        double_url,
        routes=[
            {
                "name": "kids",
                "path_prefix": "/kids",
                "upstream": "double",
                "policy": "p.yaml",
                "endpoints": {"*": "pass"},
            }
        ],
    )
    base = start_gateway(config)
    target = "/v1/vector_stores/vs%2F1/files?limit=2&after=file%20a&order=desc"
    response = httpx.get(base + "/kids" + target)
    assert response.status_code == 404  # the double's own answer, relayed
    assert response.json()["error"]["message"] == "no route /v1/vector_stores/vs/1/files"
    assert double.last().target == target.encode()
    assert double.last().method == "GET"
