"""RedisStore against a real redis-server: what the lean script call must keep doing.

One EVALSHA per acquire (releases ride along), the script reloaded after Redis lost it,
concurrent calls each on their own connection, keys and members packed byte-exact, a
connection that timed out closed, and a unix-socket URL.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.limits.spec import Limits
from proxy.limits.store import RedisStore
from tests.redis_server import RedisServer

LIMITS = Limits(requests=1000, tokens=1_000_000, concurrent=100)


def redis_command(port: int, *args: str) -> bytes:
    """One command over a raw socket (RESP), independent of the client under test."""
    packed = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(packed)
        data = b""
        while not data.endswith(b"\r\n"):
            data += s.recv(65536)
        # Bulk replies: wait for the whole body.
        if data.startswith(b"$") and not data.startswith(b"$-1"):
            size = int(data.split(b"\r\n", 1)[0][1:])
            while len(data.split(b"\r\n", 1)[1]) < size + 2:
                data += s.recv(65536)
        return data


def evalsha_calls(port: int) -> int:
    info = redis_command(port, "INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def eval_calls(port: int) -> int:
    info = redis_command(port, "INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_eval:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def read_to_end(peer: socket.socket) -> bytes:
    """Everything the client sent until it closed (times out if it keeps the socket open)."""
    sent = b""
    while chunk := peer.recv(65536):
        sent += chunk
    return sent


@pytest.fixture
async def store(redis_server: RedisServer) -> RedisStore:
    return RedisStore(redis_server.url, prefix="t", timeout_s=1.0, lease_ms=60_000)


async def test_one_script_call_per_acquire_carrying_the_releases(
    store: RedisStore, redis_server: RedisServer
) -> None:
    scopes = [("acme", LIMITS)]
    before = evalsha_calls(redis_server.port)
    for i in range(10):
        [d] = await store.acquire(scopes, f"r{i}")
        assert d.denied == ""
        assert d.requests_used == i + 1
        assert d.in_flight == 1  # the previous request's lease ended with this very call
        store.release(scopes, f"r{i}", [7])
    [d] = await store.acquire(scopes, "last")
    assert d.tokens_used == 70
    assert evalsha_calls(redis_server.port) - before == 11
    await store.aclose()


async def test_the_flush_timer_leaves_a_fresh_release_for_the_next_request(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """The timer set by an earlier release fires after a request took that release along: the
    release queued since is younger than the flush delay and waits for its own deadline (or
    the next request) instead of costing a call of its own."""
    scopes = [("acme", LIMITS)]
    await store.acquire(scopes, "a")
    store.release(scopes, "a", [1])  # sets the timer
    await store.acquire(scopes, "b")  # takes a's release along
    store.release(scopes, "b", [1])  # queued now
    calls = evalsha_calls(redis_server.port)
    store._start_flush()  # what the timer does when it fires
    await asyncio.sleep(0)
    assert store.queued == 1
    assert evalsha_calls(redis_server.port) == calls
    await store.flush()
    assert store.queued == 0
    assert evalsha_calls(redis_server.port) == calls + 1
    await store.aclose()


async def test_a_lone_release_is_sent_by_the_timer(
    store: RedisStore, redis_server: RedisServer
) -> None:
    scopes = [("acme", LIMITS)]
    await store.acquire(scopes, "a")
    store.release(scopes, "a", [1])
    for _ in range(200):  # no request follows: the timer sends it (normally after 50 ms)
        if store.queued == 0:
            break
        await asyncio.sleep(0.05)
    assert redis_command(redis_server.port, "ZCARD", "t:{acme}:inflight") == b":0\r\n"
    await store.aclose()


async def test_the_script_is_sent_again_when_redis_lost_it(
    store: RedisStore, redis_server: RedisServer
) -> None:
    scopes = [("acme", LIMITS)]
    await store.acquire(scopes, "a")  # a fresh Redis: NOSCRIPT, then EVAL
    assert eval_calls(redis_server.port) == 1
    assert redis_command(redis_server.port, "SCRIPT", "FLUSH").startswith(b"+OK")
    [d] = await store.acquire(scopes, "b")  # NOSCRIPT, then EVAL on the same connection
    assert d.requests_used == 2
    assert eval_calls(redis_server.port) == 2
    [d] = await store.acquire(scopes, "c")  # EVAL cached it again: back to EVALSHA
    assert d.requests_used == 3
    assert eval_calls(redis_server.port) == 2
    await store.aclose()


async def test_concurrent_acquires_are_each_counted_once(
    store: RedisStore, redis_server: RedisServer
) -> None:
    scopes = [("acme", LIMITS), ("acme:chat", Limits(requests=25))]
    decisions = await asyncio.gather(*(store.acquire(scopes, f"m{i}") for i in range(30)))
    admitted = [ds for ds in decisions if not any(d.denied for d in ds)]
    refused = [ds for ds in decisions if any(d.denied for d in ds)]
    assert len(admitted) == 25  # the route scope's limit, exactly
    assert sorted(ds[1].requests_used for ds in admitted) == list(range(1, 26))
    assert all(ds[1].denied == "requests" for ds in refused)
    assert redis_command(redis_server.port, "ZCARD", "t:{acme}:req") == b":25\r\n"
    await store.aclose()


async def test_keys_and_members_are_packed_byte_exact(
    store: RedisStore, redis_server: RedisServer
) -> None:
    tenant = "zürich team"  # non-ASCII and a space: lengths are in bytes
    member = "req-é-1"
    await store.acquire([(tenant, LIMITS)], member)
    reply = redis_command(redis_server.port, "ZRANGE", f"t:{{{tenant}}}:inflight", "0", "-1")
    assert reply == b"*1\r\n$%d\r\n%s\r\n" % (len(member.encode()), member.encode())
    store.release([(tenant, LIMITS)], member, [5])
    await store.flush()
    assert redis_command(redis_server.port, "ZCARD", f"t:{{{tenant}}}:inflight") == b":0\r\n"
    assert redis_command(redis_server.port, "HGET", f"t:{{{tenant}}}:tok", "cur") == b"$1\r\n5\r\n"
    await store.aclose()


async def test_a_call_that_times_out_closes_its_connection_and_keeps_the_releases() -> None:
    """A hung server: the call fails within its timeout, its connection is closed (a late
    reply would otherwise be read as the next call's), and the queued release is kept."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="t", timeout_s=0.1, lease_ms=1000)
    try:
        store.release([("acme", LIMITS)], "old", [3])
        with pytest.raises(TimeoutError):
            await store.acquire([("acme", LIMITS)], "new")
        assert store.queued == 1
        peer, _ = listener.accept()
        peer.settimeout(2)
        # In a thread: the event loop must run for the client's socket to close.
        sent = await asyncio.to_thread(read_to_end, peer)
        peer.close()
        assert sent.startswith(b"*")  # it did speak (the connection handshake), then hung up
    finally:
        await store.aclose()
        listener.close()


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    """A real redis-server listening on a unix socket only."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (apt-get install -y redis-server)"
    path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(400):  # until it listens
            if path.exists():
                break
            assert server.poll() is None, "redis-server exited"
            time.sleep(0.05)
        yield path
    finally:
        server.terminate()
        server.wait(10)


async def test_a_unix_socket_url_works(unix_redis: Path) -> None:
    """The connections come from redis-py's URL parsing: a Redis on this host's unix socket."""
    store = RedisStore(f"unix://{unix_redis}?db=0", prefix="t", timeout_s=1.0, lease_ms=60_000)
    try:
        [first] = await store.acquire([("acme", LIMITS)], "a")
        [second] = await store.acquire([("acme", LIMITS)], "b")
        assert (first.requests_used, second.requests_used) == (1, 2)
    finally:
        await store.aclose()
