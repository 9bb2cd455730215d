"""The latency guardline adds as a bare passthrough (no moderation) over the upstream alone.

Starts the fast upstream double (benchmarks/upstream_double.py) and the gateway as separate
processes, then drives both with a minimal keep-alive HTTP/1.1 client (raw asyncio streams, so
the client's own cost is small and identical for both paths):

1. concurrency 1: alternating blocks of sequential requests, direct vs through the gateway;
   added latency = gateway percentile - direct percentile;
2. under load: an open-loop constant request rate (latency counted from each request's
   scheduled start, so queueing is included), rising until the added p99 (median of
   `--trials` runs, because other processes on a shared machine add bursts of noise) passes
   10 ms at two rates in a row.

Also reported: the gateway process's CPU time per request (from /proc), which unlike
latency hardly depends on what else the machine is doing.

`--endpoints` measures the other /v1/ endpoints instead (issue 11, the `pass` rule: relayed
byte for byte, request and answer streamed): concurrency 1 only, chat JSON beside them as
the reference, an embeddings JSON body and a 64 KiB multipart file upload, taking turns
block by block.

    .venv/bin/python benchmarks/bench_passthrough.py [--requests 4000] [--seconds 4]
    .venv/bin/python benchmarks/bench_passthrough.py --endpoints [--requests 4000]
    .venv/bin/python benchmarks/bench_passthrough.py --compare REV [--requests 4000]

`--compare REV` starts a second gateway from commit REV (a snapshot) on the same upstream
double and measures concurrency 1 only, the two gateways taking turns block by block with
the direct path: a before/after comparison under the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

CHAT = orjson.dumps(
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one short sentence about foxes."},
        ],
        "temperature": 0.2,
    }
)
CHAT_STREAM = orjson.dumps({**orjson.loads(CHAT), "stream": True})
EMBEDDINGS = orjson.dumps(
    {"model": "text-embedding-3-small", "input": "Write one short sentence about foxes."}
)
BOUNDARY = "guardlinebench0123456789"
UPLOAD = (
    (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="batch.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    + bytes(range(256)) * 256
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# The same question to the Responses API (the bench upstream answers every path alike).
RESPONSES = orjson.dumps(
    {
        "model": "bench-model",
        "instructions": "You are a helpful assistant.",
        "input": "Write one short sentence about foxes.",
        "temperature": 0.2,
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def request_bytes(
    port: int, path: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nAuthorization: Bearer sk-bench\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Conn:
    """One keep-alive HTTP/1.1 connection; reads content-length and chunked bodies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def call(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            i = lower.index(b"content-length:") + 15
            length = int(lower[i : lower.index(b"\r\n", i)])
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential(port: int, raw: bytes, n: int, conn: Conn) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        status = await conn.call(raw)
        out.append((time.perf_counter_ns() - t0) / 1e6)
        assert status == 200, status
    return out


async def concurrency_one(
    direct: tuple[int, bytes], gateway: tuple[int, bytes], n: int, gateway_pid: int
) -> tuple[list[float], list[float], float]:
    """Latencies direct and through the gateway, and the gateway's CPU µs per request."""
    dconn, gconn = await Conn.open(direct[0]), await Conn.open(gateway[0])
    await sequential(direct[0], direct[1], 200, dconn)  # warm-up
    await sequential(gateway[0], gateway[1], 200, gconn)
    d: list[float] = []
    g: list[float] = []
    block = 100
    cpu = 0.0
    for _ in range(n // block):  # alternate so that machine noise hits both alike
        d += await sequential(direct[0], direct[1], block, dconn)
        before = cpu_seconds(gateway_pid)
        g += await sequential(gateway[0], gateway[1], block, gconn)
        cpu += cpu_seconds(gateway_pid) - before
    dconn.close()
    gconn.close()
    return d, g, cpu / len(g) * 1e6


async def open_loop(port: int, raw: bytes, rate: float, seconds: float, conns: int) -> list[float]:
    """Requests scheduled every 1/rate s; latency from the scheduled start (no omission)."""
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = await Conn.open(port)
        while (scheduled := await queue.get()) is not None:
            status = await conn.call(raw)
            latencies.append((time.perf_counter() - scheduled) * 1000)
            errors += status != 200
        conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(conns)]
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    assert errors == 0, f"{errors} non-200 answers"
    return latencies


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@contextmanager
def processes(chunks: int, compare: str | None = None) -> Iterator[tuple[int, int, int]]:
    dport, gport = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            "upstreams:\n"
            f"  double: {{type: openai, base_url: 'http://127.0.0.1:{dport}/v1'}}\n"
            "routes:\n"
            f"  - {{name: default, upstream: double, policy: '{ROOT}/policies/default.yaml',\n"
            "      endpoints: {'*': pass}}\n"
            "logging: {level: warning}\n"
            f"audit: {{path: '{tmp}/audit.sqlite3'}}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        double = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "upstream_double.py"),
                "--port",
                str(dport),
                "--chunks",
                str(chunks),
            ],
            env=env,
        )
        gateway = subprocess.Popen(
            [sys.executable, __file__, "--run-gateway", str(config), "--port", str(gport)], env=env
        )
        others: list[subprocess.Popen[bytes]] = []
        if compare is not None:
            # The same gateway from another commit (`--compare`), on the same upstream double.
            code = Path(tmp) / "compare"
            sys.path.insert(0, str(HERE))
            from moderation_procs import snapshot

            snapshot(code, compare)
            cport = free_port()
            others.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(code / "benchmarks" / Path(__file__).name),
                        "--run-gateway",
                        str(config),
                        "--port",
                        str(cport),
                    ],
                    env={**os.environ, "PYTHONPATH": str(code)},
                )
            )
            COMPARED.update(port=cport, pid=others[0].pid)
        try:
            wait_port(dport, double)
            wait_port(gport, gateway)
            for other in others:
                wait_port(COMPARED["port"], other)
            yield dport, gport, gateway.pid
        finally:
            for proc in (*others, gateway, double):
                proc.terminate()
            for proc in (*others, gateway, double):
                proc.wait(timeout=30)


# The `--compare` gateway's port and pid, once started.
COMPARED: dict[str, int] = {}


async def bench_compare(args: argparse.Namespace, dport: int, gport: int, gpid: int) -> None:
    """Concurrency 1, this work tree's gateway and the `--compare` commit's side by side: blocks
    of 100 requests direct, through one, through the other, in turn."""
    cport, cpid = COMPARED["port"], COMPARED["pid"]
    print(f"## concurrency 1, {args.requests} requests per path (ms), work tree vs {args.compare}")
    print("| request | gateway | added p50 | added p90 | added p99 | gw CPU µs/req |")
    print("|---|---|---:|---:|---:|---:|")
    for name, path, body in (
        ("chat, JSON", "/v1/chat/completions", CHAT),
        (f"chat, SSE {args.chunks} chunks", "/v1/chat/completions", CHAT_STREAM),
        ("responses, JSON", "/v1/responses", RESPONSES),
    ):
        targets = [(port, request_bytes(port, path, body)) for port in (dport, gport, cport)]
        conns = [await Conn.open(port) for port, _ in targets]
        for (port, raw), conn in zip(targets, conns, strict=True):  # warm-up
            await sequential(port, raw, 200, conn)
        times: list[list[float]] = [[], [], []]
        cpu = [0.0, 0.0]
        for _ in range(args.requests // 100):
            times[0] += await sequential(targets[0][0], targets[0][1], 100, conns[0])
            for k, pid in ((1, gpid), (2, cpid)):
                before = cpu_seconds(pid)
                times[k] += await sequential(targets[k][0], targets[k][1], 100, conns[k])
                cpu[k - 1] += cpu_seconds(pid) - before
        for conn in conns:
            conn.close()
        for k, label in ((1, "work tree"), (2, args.compare)):
            added = [pct(times[k], q) - pct(times[0], q) for q in (0.5, 0.9, 0.99)]
            cells = " | ".join(f"{a:.3f}" for a in added)
            us = cpu[k - 1] / len(times[k]) * 1e6
            print(f"| {name} | {label} | {cells} | {us:.0f} |", flush=True)


def run_gateway(config_path: str, port: int) -> None:
    """The gateway process: exactly `guardline serve`'s uvicorn settings, moderation off."""
    import uvicorn

    from proxy.app import create_app
    from proxy.cli.serve import uvicorn_options
    from proxy.config import load_config

    config = load_config(config_path)
    app = create_app(config, moderation=False, freeze_gc=True)
    uvicorn.run(app, **uvicorn_options(config, port=port))


def row(name: str, d: list[float], g: list[float], cpu_us: float) -> str:
    cells = []
    for q in (0.5, 0.9, 0.99):
        cells += [pct(d, q), pct(g, q), pct(g, q) - pct(d, q)]
    return f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {cpu_us:.0f} |"


async def bench_endpoints(args: argparse.Namespace, dport: int, gport: int, gpid: int) -> None:
    """Concurrency 1: chat (reference) and `pass` endpoints, direct vs through the gateway.

    The cases take turns block by block (100 requests direct, 100 through the gateway, next
    case), so that the machine's noise at any moment hits every case alike."""
    print(f"## concurrency 1, {args.requests} requests per path (ms; endpoints rule `pass`)")
    print(
        "| request | direct p50 | gw p50 | added p50 | direct p90 | gw p90 | added p90 "
        "| direct p99 | gw p99 | added p99 | gw CPU µs/req |"
    )
    print("|---|" + "---:|" * 11)
    cases = (
        ("chat, JSON (reference)", "/v1/chat/completions", CHAT, "application/json"),
        ("embeddings, JSON, pass", "/v1/embeddings", EMBEDDINGS, "application/json"),
        ("files, 64 KiB multipart upload, pass", "/v1/files", UPLOAD, MULTIPART),
    )
    raw = [
        (request_bytes(dport, path, body, ctype), request_bytes(gport, path, body, ctype))
        for _, path, body, ctype in cases
    ]
    conns = [(await Conn.open(dport), await Conn.open(gport)) for _ in cases]
    for (dreq, greq), (dconn, gconn) in zip(raw, conns, strict=True):  # warm-up
        await sequential(dport, dreq, 200, dconn)
        await sequential(gport, greq, 200, gconn)
    direct: list[list[float]] = [[] for _ in cases]
    through: list[list[float]] = [[] for _ in cases]
    cpu = [0.0 for _ in cases]
    block = 100
    for _ in range(args.requests // block):
        for k, ((dreq, greq), (dconn, gconn)) in enumerate(zip(raw, conns, strict=True)):
            direct[k] += await sequential(dport, dreq, block, dconn)
            before = cpu_seconds(gpid)
            through[k] += await sequential(gport, greq, block, gconn)
            cpu[k] += cpu_seconds(gpid) - before
    for dconn, gconn in conns:
        dconn.close()
        gconn.close()
    for k, (name, *_) in enumerate(cases):
        print(row(name, direct[k], through[k], cpu[k] / len(through[k]) * 1e6), flush=True)


async def bench(args: argparse.Namespace, dport: int, gport: int, gpid: int) -> None:
    direct = (dport, request_bytes(dport, "/v1/chat/completions", CHAT))
    through = (gport, request_bytes(gport, "/v1/chat/completions", CHAT))
    direct_s = (dport, request_bytes(dport, "/v1/chat/completions", CHAT_STREAM))
    through_s = (gport, request_bytes(gport, "/v1/chat/completions", CHAT_STREAM))

    print(f"## concurrency 1, {args.requests} requests per path (ms)")
    print(
        "| request | direct p50 | gw p50 | added p50 | direct p90 | gw p90 | added p90 "
        "| direct p99 | gw p99 | added p99 |"
    )
    print("|---|" + "---:|" * 10)
    d, g, cpu = await concurrency_one(direct, through, args.requests, gpid)
    print(row("chat, JSON", d, g, cpu), flush=True)
    d, g, cpu = await concurrency_one(direct_s, through_s, args.requests, gpid)
    print(row(f"chat, SSE {args.chunks} chunks (to last byte)", d, g, cpu), flush=True)
    direct_r = (dport, request_bytes(dport, "/v1/responses", RESPONSES))
    through_r = (gport, request_bytes(gport, "/v1/responses", RESPONSES))
    d, g, cpu = await concurrency_one(direct_r, through_r, args.requests, gpid)
    print(row("responses, JSON", d, g, cpu), flush=True)

    print(
        f"\n## open-loop load, {args.trials} trials x {args.seconds:g} s per rate and path, "
        f"{args.conns} connections (ms; median trial by added p99)"
    )
    print("| rate req/s | direct p50 | gw p50 | direct p99 | gw p99 | added p99 | all trials |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    best = 0.0
    failed = 0
    for rate in args.rates:
        trials = []
        for _ in range(args.trials):
            d = await open_loop(dport, direct[1], rate, args.seconds, args.conns)
            g = await open_loop(gport, through[1], rate, args.seconds, args.conns)
            trials.append((pct(g, 0.99) - pct(d, 0.99), d, g))
        trials.sort(key=lambda t: t[0])
        added, d, g = trials[len(trials) // 2]
        every = ", ".join(f"{t[0]:.1f}" for t in trials)
        print(
            f"| {rate:g} | {pct(d, 0.5):.2f} | {pct(g, 0.5):.2f} | {pct(d, 0.99):.2f} "
            f"| {pct(g, 0.99):.2f} | {added:.2f} | {every} |",
            flush=True,
        )
        if added > 10:
            failed += 1
            if failed == 2:  # two rates in a row over the limit: past the knee
                break
        else:
            failed = 0
            best = rate
    print(f"\nhighest rate with median added p99 <= 10 ms: {best:g} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per path at concurrency 1")
    parser.add_argument("--seconds", type=float, default=4.0, help="per rate under load")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3, help="per rate under load")
    parser.add_argument("--chunks", type=int, default=20, help="SSE content chunks")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[100, 200, 400, 600, 800, 1000, 1200, 1500, 2000]
    )
    parser.add_argument(
        "--endpoints", action="store_true", help="the other /v1/ endpoints (pass), conc. 1"
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="concurrency 1 only: also a gateway from this commit, side by side in the run",
    )
    parser.add_argument("--run-gateway", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_gateway:
        run_gateway(args.run_gateway, args.port)
        return
    import uvloop

    with processes(args.chunks, args.compare) as (dport, gport, gpid):
        run = bench_endpoints if args.endpoints else bench
        if args.compare:
            run = bench_compare
        uvloop.run(run(args, dport, gport, gpid))


if __name__ == "__main__":
    main()
