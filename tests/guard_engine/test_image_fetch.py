"""SSRF-safe image fetching: refusals, address pinning, redirects, caps, and a real server."""

from __future__ import annotations

import asyncio
import io
import pathlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from PIL import Image

from guard_engine.errors import ImageError
from guard_engine.image_fetch import ImageFetcher, blocked_reason
from guard_engine.images import load_image

PARAM = "messages[3].content[1]"
PUBLIC = "93.184.215.14"


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 255)).save(out, format="PNG")
    return out.getvalue()


def fixed_resolver(table: dict[str, list[str]]) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request may be sent, got {request.url}")


def image_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "image/png"}, content=png_bytes())


async def fetch_with(
    url: str,
    handler: Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]],
    resolver: Callable[[str, int], Awaitable[list[str]]] | None = None,
    *,
    max_bytes: int = 10 * 1024 * 1024,
    timeout_s: float = 5.0,
    max_redirects: int = 3,
) -> bytes:
    fetcher = ImageFetcher(
        resolver=resolver or fixed_resolver({}),
        transport=httpx.MockTransport(handler),
        max_bytes=max_bytes,
        timeout_s=timeout_s,
        max_redirects=max_redirects,
    )
    try:
        return await fetcher.fetch(url, param=PARAM)
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cat.png",
        "http://127.8.9.10:8080/cat.png",
        "http://10.0.0.1/cat.png",
        "http://172.16.5.4/cat.png",
        "http://192.168.1.1/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://100.64.0.1/cat.png",
        "http://0.0.0.0/cat.png",
        "http://224.0.0.1/cat.png",
        "http://240.0.0.1/cat.png",
        "http://[::1]/cat.png",
        "http://[::]/cat.png",
        "http://[::ffff:127.0.0.1]/cat.png",
        "http://[::ffff:a9fe:a9fe]/cat.png",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/cat.png",
        "http://[fc00::1]/cat.png",
        "http://[ff02::1]/cat.png",
        "http://[64:ff9b::a00:1]/cat.png",  # NAT64 form of 10.0.0.1
        "http://[2002:a00:1::]/cat.png",  # 6to4 form of 10.0.0.1
    ],
)
async def test_internal_addresses_are_refused_without_a_request(url: str) -> None:
    with pytest.raises(ImageError, match="refused") as err:
        await fetch_with(url, never_called)
    assert err.value.param == PARAM
    assert str(err.value).startswith(PARAM)


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/a.png", "http://0x7f000001/a.png", "http://127.1/a.png", "http://0/"],
)
async def test_odd_numeric_hosts_are_resolved_then_vetted(url: str) -> None:
    # The OS resolver reads these as IPv4 numbers; the vetting sees the resulting address.
    fetcher = ImageFetcher(transport=httpx.MockTransport(never_called))
    try:
        with pytest.raises(ImageError, match="refused"):
            await fetcher.fetch(url, param=PARAM)
    finally:
        await fetcher.aclose()


def test_metadata_addresses_are_named() -> None:
    import ipaddress

    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"):
        assert blocked_reason(ipaddress.ip_address(address)) == "a cloud metadata address"
    assert blocked_reason(ipaddress.ip_address(PUBLIC)) is None
    assert blocked_reason(ipaddress.ip_address("2606:4700::1111")) is None


async def test_public_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = fixed_resolver({"images.example.com": ["10.1.2.3"]})
    with pytest.raises(ImageError, match=r"images\.example\.com' resolves to a private address"):
        await fetch_with("https://images.example.com/a.png", never_called, resolver)


async def test_any_private_answer_among_several_is_refused() -> None:
    resolver = fixed_resolver({"images.example.com": [PUBLIC, "::1"]})
    with pytest.raises(ImageError, match="loopback"):
        await fetch_with("https://images.example.com/a.png", never_called, resolver)


async def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(ImageError, match="could not be resolved"):
        await fetch_with("https://nowhere.invalid/a.png", never_called)


async def test_request_goes_to_the_vetted_ip_with_the_name_kept() -> None:
    seen: list[httpx.Request] = []
    answers = iter([[PUBLIC], ["127.0.0.1"]])  # a rebinding DNS: public first, then loopback

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return image_ok(request)

    body = await fetch_with("https://img.example.com:8443/a.png?s=1", handler, rebinding)
    assert body == png_bytes()
    (request,) = seen
    assert request.url.host == PUBLIC and request.url.port == 8443
    assert request.url.path == "/a.png" and request.url.query == b"s=1"
    assert request.headers["host"] == "img.example.com:8443"
    assert request.extensions["sni_hostname"] == "img.example.com"  # TLS verifies the name


async def test_redirect_to_a_private_address_is_refused() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC], "internal.example.com": ["10.0.0.7"]})
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["host"])
        return httpx.Response(302, headers={"location": "http://internal.example.com/secret"})

    with pytest.raises(ImageError, match=r"internal\.example\.com' resolves to a private"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)
    assert seen == ["cdn.example.com"]


async def test_redirect_to_metadata_ip_literal_is_refused() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"location": "http://169.254.169.254/latest/"})

    with pytest.raises(ImageError, match="cloud metadata"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)


async def test_relative_redirects_are_followed_and_revetted() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC], "img.example.net": ["1.1.1.1"]})
    hops: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hops.append(f"{request.headers['host']}{request.url.path}")
        if request.url.path == "/a.png":
            return httpx.Response(307, headers={"location": "/b.png"})
        if request.url.path == "/b.png":
            return httpx.Response(302, headers={"location": "https://img.example.net/c.png"})
        return image_ok(request)

    assert await fetch_with("https://cdn.example.com/a.png", handler, resolver) == png_bytes()
    assert hops == ["cdn.example.com/a.png", "cdn.example.com/b.png", "img.example.net/c.png"]


async def test_too_many_redirects() -> None:
    resolver = fixed_resolver({"loop.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "/again"})

    with pytest.raises(ImageError, match="redirected more than 2 times"):
        await fetch_with("http://loop.example.com/", handler, resolver, max_redirects=2)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com/"],
)
async def test_only_http_and_https(url: str) -> None:
    with pytest.raises(ImageError, match="is not allowed"):
        await fetch_with(url, never_called)


async def test_redirect_to_another_scheme_is_refused() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "file:///etc/passwd"})

    with pytest.raises(ImageError, match="scheme 'file' is not allowed"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)


async def test_credentials_in_url_are_refused() -> None:
    with pytest.raises(ImageError, match="credentials"):
        await fetch_with("https://user:pw@cdn.example.com/a.png", never_called)


async def test_declared_oversize_is_refused() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "image/png", "content-length": "5000"}, content=b""
        )

    with pytest.raises(ImageError, match="larger than 1000 bytes"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver, max_bytes=1000)


async def test_streamed_oversize_is_cut_off() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            sent.append(1)
            yield b"\x00" * 512

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=endless())

    with pytest.raises(ImageError, match="larger than 1000 bytes"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver, max_bytes=1000)
    assert len(sent) < 10  # stopped reading right after the cap


@pytest.mark.parametrize("ctype", ["text/html", "application/octet-stream", None])
async def test_content_type_must_be_an_image(ctype: str | None) -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {} if ctype is None else {"content-type": ctype}
        return httpx.Response(200, headers=headers, content=png_bytes())

    with pytest.raises(ImageError, match="not image/"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)


async def test_compressed_bodies_are_refused() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        headers = {"content-type": "image/png", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, content=b"\x1f\x8b")

    with pytest.raises(ImageError, match="gzip-encoded"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)


async def test_http_errors_are_refused() -> None:
    resolver = fixed_resolver({"cdn.example.com": [PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, headers={"content-type": "image/png"})

    with pytest.raises(ImageError, match="answered HTTP 404"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)


async def test_the_whole_fetch_has_a_deadline() -> None:
    resolver = fixed_resolver({"slow.example.com": [PUBLIC]})

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return image_ok(request)

    with pytest.raises(ImageError, match=r"timed out after 0\.05s") as err:
        await fetch_with("https://slow.example.com/a.png", handler, resolver, timeout_s=0.05)
    assert err.value.param == PARAM


async def test_slow_dns_counts_against_the_deadline() -> None:
    async def slow_resolver(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return [PUBLIC]

    with pytest.raises(ImageError, match="timed out"):
        await fetch_with(
            "https://slow.example.com/a.png", never_called, slow_resolver, timeout_s=0.05
        )


async def test_next_vetted_address_is_tried_when_one_does_not_connect() -> None:
    resolver = fixed_resolver({"cdn.example.com": ["192.0.2.1", PUBLIC]})

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host != PUBLIC:
            raise httpx.ConnectError("connection refused", request=request)
        return image_ok(request)

    # 192.0.2.1 is TEST-NET-1 (not global), so it must be refused even as a fallback.
    with pytest.raises(ImageError, match="refused"):
        await fetch_with("https://cdn.example.com/a.png", handler, resolver)
    ok = fixed_resolver({"cdn.example.com": ["8.8.8.8", PUBLIC]})
    assert await fetch_with("https://cdn.example.com/a.png", handler, ok) == png_bytes()


# --- a real HTTP server on 127.0.0.1 ------------------------------------------------------


Route = tuple[int, dict[str, str], bytes]


@asynccontextmanager
async def http_server(routes: dict[str, Route]) -> AsyncIterator[int]:
    """A minimal real HTTP/1.1 server (one response per connection); yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            if path == "/hang":
                await reader.read()  # answers nothing; returns when the client gives up
                return
            status, headers, body = routes.get(path, (404, {}, b""))
            lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_real_server_on_localhost_default_refused_allow_private_fetches() -> None:
    png = png_bytes()
    routes: dict[str, Route] = {
        "/cat.png": (200, {"Content-Type": "image/png"}, png),
        "/moved": (302, {"Location": "/cat.png"}, b""),
    }
    async with http_server(routes) as port:
        default = ImageFetcher()
        try:
            with pytest.raises(ImageError, match="loopback address; refused"):
                await default.fetch(f"http://127.0.0.1:{port}/cat.png", param=PARAM)
            with pytest.raises(ImageError, match="loopback address; refused"):
                await default.fetch(f"http://localhost:{port}/cat.png", param=PARAM)
        finally:
            await default.aclose()

        local = ImageFetcher(allow_private=True)
        try:
            assert await local.fetch(f"http://127.0.0.1:{port}/cat.png", param=PARAM) == png
            assert await local.fetch(f"http://localhost:{port}/moved", param=PARAM) == png
            image = await load_image(f"http://127.0.0.1:{port}/cat.png", param=PARAM, fetcher=local)
            assert image.mime == "image/jpeg"
        finally:
            await local.aclose()


async def test_real_server_timeout_and_refused_connection() -> None:
    async with http_server({}) as port:
        fetcher = ImageFetcher(allow_private=True, timeout_s=0.2)
        try:
            with pytest.raises(ImageError, match="timed out"):
                await fetcher.fetch(f"http://127.0.0.1:{port}/hang", param=PARAM)
        finally:
            await fetcher.aclose()
    # The server is gone now: a refused connection is an ImageError too.
    fetcher = ImageFetcher(allow_private=True)
    try:
        with pytest.raises(ImageError, match="could not be fetched"):
            await fetcher.fetch(f"http://127.0.0.1:{port}/cat.png", param=PARAM)
    finally:
        await fetcher.aclose()


# --- a real HTTPS server: the pinned connection still verifies the certificate by name -----


@pytest.fixture
def tls_cert(tmp_path: pathlib.Path) -> tuple[str, str]:
    """A self-signed certificate for the name img.test, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=img.test",
            "-addext",
            "subjectAltName=DNS:img.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


async def test_https_to_the_pinned_ip_sends_sni_and_verifies_the_name(
    tls_cert: tuple[str, str],
) -> None:
    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni_seen: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _c: object) -> None:
        sni_seen.append(name)

    server_ctx.sni_callback = record_sni
    png = png_bytes()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(png)}"
            writer.write(head.encode() + b"\r\nConnection: close\r\n\r\n" + png)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client refused our certificate
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=cert)
    resolver = fixed_resolver({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    fetcher = ImageFetcher(
        allow_private=True,
        resolver=resolver,
        transport=httpx.AsyncHTTPTransport(verify=client_ctx),
    )
    try:
        assert await fetcher.fetch(f"https://img.test:{port}/cat.png", param=PARAM) == png
        assert sni_seen == ["img.test"]
        # Same IP, but the certificate is not valid for this name: refused by TLS verification.
        with pytest.raises(ImageError, match="could not be fetched"):
            await fetcher.fetch(f"https://other.test:{port}/cat.png", param=PARAM)
    finally:
        await fetcher.aclose()
        server.close()
        await server.wait_closed()
