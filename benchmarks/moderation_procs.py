"""Processes for the moderation benchmark: guard double, upstream double, gateway.

Each runs in its own process so that none shares the benchmark client's GIL or event loop:

- the SGLang guard double: `python -m tests.doubles.sglang_server --delay-ms N` (prints its URL);
- the header-steered OpenAI upstream double (`tests/doubles/upstream.py`), served by this
  module's `__main__` (`python benchmarks/moderation_procs.py`; prints its URL);
- the gateway: `guardline serve --config PATH --port P`, ready once `/healthz` answers.

Every child is stopped (stdin closed, then SIGTERM, then SIGKILL) when its context exits, so
a benchmark that fails half-way leaves nothing running.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # the doubles exit when their stdin closes
    else:
        proc.terminate()  # the gateway: SIGTERM is its graceful shutdown
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Child:
    """A running child process: its base URL and pid (for its CPU time)."""

    url: str
    pid: int

    def cpu_s(self) -> float:
        """User + system CPU seconds the process (all its threads) has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        # After the ")" that ends the command name: utime and stime are fields 12 and 13.
        return (int(fields[11]) + int(fields[12])) / _TICKS


_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def _url_printer(argv: list[str]) -> Iterator[Child]:
    """Run a child that prints its base URL on stdout's first line; yield it."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"{argv!r} did not print its URL (got {line!r})")
        yield Child(line, proc.pid)
    finally:
        _stop(proc)


def guard_double(delay_ms: float) -> AbstractContextManager[Child]:
    """The SGLang/Nemotron double answering after a fixed `delay_ms`."""
    argv = [sys.executable, "-m", "tests.doubles.sglang_server", "--delay-ms", str(delay_ms)]
    return _url_printer(argv)


def upstream_double() -> AbstractContextManager[Child]:
    """The OpenAI upstream double (delays and stream shape steered by x-double-* headers)."""
    return _url_printer([sys.executable, str(Path(__file__).resolve())])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def gateway(
    config: Path,
    log: IO[bytes],
    *,
    startup_s: float = 60.0,
    env: Mapping[str, str] | None = None,
    root: Path = ROOT,
) -> Iterator[Child]:
    """`guardline serve --config config` on a free 127.0.0.1 port; yields its base URL.

    `env` adds variables to the gateway's environment (e.g. OTEL_*). `root` is the source
    tree the gateway imports (default: this work tree; `snapshot()` makes a fixed one)."""
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "import sys; from proxy.cli import main; sys.exit(main())",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    # PYTHONPATH comes before the editable install's finder: `root` is what gets imported.
    child_env = {**_ENV, "PYTHONPATH": str(root), **(env or {})}
    proc = subprocess.Popen(argv, cwd=root, env=child_env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not healthy after {startup_s} s; see {log.name}")
            time.sleep(0.1)
        yield Child(url, proc.pid)
    finally:
        _stop(proc)


def snapshot(dest: Path, rev: str = "HEAD") -> str:
    """Extract the committed tree at `rev` into `dest`; returns its short commit id.

    The work tree is shared and edited while a benchmark runs; a snapshot pins the code
    under test to one commit for the whole run."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def _serve_upstream_double() -> None:
    import uvicorn

    sys.path.insert(0, str(ROOT))
    from tests.doubles.upstream import UpstreamDouble

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY: no delayed-ACK stall between headers and body.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections made before uvicorn starts wait in the backlog
    config = uvicorn.Config(
        UpstreamDouble(),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin (or dies)
        server.should_exit = True

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    _serve_upstream_double()
