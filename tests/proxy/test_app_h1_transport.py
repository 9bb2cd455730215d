"""H1Transport against real sockets: raw asyncio servers on 127.0.0.1 that answer exact bytes."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from proxy.upstreams.h1_transport import H1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.eof = asyncio.Event()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@asynccontextmanager
async def serve(
    answer: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[Server, str]]:
    state = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await answer(state, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            state.eof.set()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield state, f"http://127.0.0.1:{port}/v1/chat/completions"


async def keep_alive(
    state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        state.requests.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()


def post(url: str, body: bytes = b"{}", **timeouts: float) -> httpx.Request:
    limits = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0} | timeouts
    return httpx.Request("POST", url, content=body, extensions={"timeout": limits})


async def call(transport: H1Transport, request: httpx.Request) -> tuple[int, bytes]:
    response = await transport.handle_async_request(request)
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


async def test_keep_alive_reuses_one_connection() -> None:
    async with serve(keep_alive) as (state, url):
        transport = H1Transport()
        for _ in range(5):
            assert await call(transport, post(url, b'{"a":1}')) == (200, b"{}")
        await transport.aclose()
    assert state.connections == 1
    assert len(state.requests) == 5
    assert state.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert state.requests[0].endswith(b'\r\n\r\n{"a":1}')
    assert b"content-length: 7" in state.requests[0].lower()


async def test_connection_close_is_not_reused() -> None:
    async def close_each(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with serve(close_each) as (state, url):
        transport = H1Transport()
        for _ in range(3):
            assert await call(transport, post(url)) == (200, b"ok")
        await transport.aclose()
    assert state.connections == 3


async def test_chunked_body_streams_as_it_arrives() -> None:
    release = asyncio.Event()

    async def chunked(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(chunked) as (_, url):
        transport = H1Transport()
        response = await transport.handle_async_request(post(url))
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"data:1"  # before the rest was even sent
        release.set()
        assert [c async for c in chunks] == [b"data:2"]
        await response.aclose()
        await transport.aclose()


async def test_closing_early_drops_the_connection() -> None:
    async def endless(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"5\r\nchunk\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with serve(endless) as (state, url):
        transport = H1Transport()
        response = await transport.handle_async_request(post(url))
        assert await anext(response.aiter_raw()) == b"chunk"
        await response.aclose()
        await asyncio.wait_for(state.eof.wait(), 10)
        await transport.aclose()


async def test_server_dying_mid_body_is_a_protocol_error() -> None:
    async def dies(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async with serve(dies) as (_, url):
        transport = H1Transport()
        response = await transport.handle_async_request(post(url))
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
        await transport.aclose()


async def test_no_answer_is_a_read_timeout_and_no_server_a_connect_error() -> None:
    async def silent(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        await reader.read()

    async with serve(silent) as (_, url):
        transport = H1Transport()
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(post(url, read=0.05))
        await transport.aclose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = H1Transport()
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(post(f"http://127.0.0.1:{port}/"))
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(post("ftp://127.0.0.1/"))


async def test_pool_limit_waits_then_times_out() -> None:
    gate = asyncio.Event()

    async def slow(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await read_request(reader)
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    async with serve(slow) as (state, url):
        transport = H1Transport(max_connections=1)
        first = asyncio.ensure_future(call(transport, post(url)))
        await asyncio.sleep(0)
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(post(url, pool=0.05))
        second = asyncio.ensure_future(call(transport, post(url)))
        gate.set()
        assert await first == (200, b"{}")
        assert await second == (200, b"{}")
        await transport.aclose()
    assert state.connections == 1


async def test_large_bodies_both_ways() -> None:
    big = b"x" * (3 * 1024 * 1024)

    async def echo(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = await read_request(reader)
        body = request.split(b"\r\n\r\n", 1)[1]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async with serve(echo) as (_, url):
        transport = H1Transport()
        assert await call(transport, post(url, big)) == (200, big)
        await transport.aclose()


async def test_streamed_request_body_is_sent_in_parts() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async with serve(keep_alive) as (state, url):
        transport = H1Transport()
        request = httpx.Request(
            "POST",
            url,
            content=parts(),
            headers={"content-length": "7"},
            extensions={"timeout": {"read": 5.0, "write": 5.0, "connect": 5.0, "pool": 5.0}},
        )
        assert await call(transport, request) == (200, b"{}")
        await transport.aclose()
    assert state.requests[0].endswith(b'\r\n\r\n{"a":1}')


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost / 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


async def test_https_verifies_the_certificate(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client refused our certificate
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        trusted = H1Transport(ssl_context=ssl.create_default_context(cafile=cert))
        url = f"https://localhost:{port}/v1/chat/completions"
        assert await call(trusted, post(url)) == (200, b"{}")
        await trusted.aclose()
        untrusted = H1Transport()  # the system's CAs do not know this certificate
        with pytest.raises(httpx.ConnectError):
            await untrusted.handle_async_request(post(url))
        await untrusted.aclose()


async def test_body_delimited_by_close_ends_at_eof() -> None:
    async def until_close(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()

    async with serve(until_close) as (state, url):
        transport = H1Transport()
        for _ in range(2):  # never reused: the second request needs a new connection
            assert await call(transport, post(url)) == (200, b"data: 1\n\ndata: [DONE]\n\n")
        await transport.aclose()
    assert state.connections == 2


async def test_httpx_hands_the_transport_what_it_relies_on() -> None:
    """H1Transport reads a few things httpx puts on a request: the `timeout` extension (a dict
    with the four phases), `content` raising RequestNotRead for a streamed body, and
    `transfer-encoding: chunked` on a streamed body without a length. Pinned here so an httpx
    upgrade that changes any of them fails this test rather than the gateway."""
    seen: list[tuple[object, bool, str | None]] = []

    class Recording(H1Transport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                streamed = not request.content  # a body in memory: no exception
            except httpx.RequestNotRead:
                streamed = True
            seen.append(
                (
                    request.extensions.get("timeout"),
                    streamed,
                    request.headers.get("transfer-encoding"),
                )
            )
            return await super().handle_async_request(request)

    async def parts() -> AsyncIterator[bytes]:
        yield b"{"
        yield b"}"

    async def answer(
        state: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        state.requests.append(await read_request(reader))
        writer.write(OK)
        head = await reader.readuntil(b"\r\n\r\n")
        state.requests.append(head + await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        await reader.read()  # until the client closes

    async with serve(answer) as (state, url):
        timeout = httpx.Timeout(connect=1.0, read=2.0, write=3.0, pool=4.0)
        async with httpx.AsyncClient(transport=Recording(), timeout=timeout) as client:
            assert (await client.post(url, content=b"{}")).status_code == 200  # non-empty body
            assert (await client.post(url, content=parts())).status_code == 200
    phases = {"connect": 1.0, "read": 2.0, "write": 3.0, "pool": 4.0}
    assert seen == [(phases, False, None), (phases, True, "chunked")]
    assert state.requests[1].endswith(b"\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n")
