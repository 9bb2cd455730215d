"""A real nginx (Debian: `apt-get install nginx`) running deploy/nginx.conf on 127.0.0.1.

The deployed file is used as written except for the addresses: its three `gateway-N:8080`
replica lines point at the given 127.0.0.1 ports and `listen 8080` at a free local port.
nginx runs in the foreground with its own prefix directory (pid file, temp files), so nothing
outside the test's temporary directory is touched. A missing binary is a failure, never a skip.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
INSTALL_HINT = (
    "nginx is not installed: the deploy tests run the real one "
    "(Debian/Ubuntu: apt-get install -y nginx; ./scripts/test installs it as root)"
)
_REPLICA = re.compile(r"\bgateway-(\d+):8080\b")


def nginx_binary() -> str:
    # Debian puts it in /usr/sbin, which is not on every user's PATH.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert found, INSTALL_HINT
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def render(text: str, replica_ports: list[int], listen_port: int) -> str:
    """deploy/nginx.conf with replica N at 127.0.0.1:replica_ports[N-1] (see module doc)."""
    numbers = sorted({int(n) for n in _REPLICA.findall(text)})
    assert numbers == list(range(1, len(replica_ports) + 1)), numbers
    text = _REPLICA.sub(lambda m: f"127.0.0.1:{replica_ports[int(m.group(1)) - 1]}", text)
    text, listens = re.subn(r"\blisten 8080;", f"listen 127.0.0.1:{listen_port};", text)
    assert listens == 1
    return text


def check_config(prefix: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `text` written to prefix/nginx.conf."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return subprocess.run(
        [nginx_binary(), "-t", "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )


class Nginx:
    def __init__(self, prefix: Path, replica_ports: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.text = render(DEPLOY_CONF.read_text(), replica_ports, self.port)
        self.access_log = prefix / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.text)
        with self.access_log.open("wb") as log:
            # The access log goes to stdout (as in a container), here into a file.
            self.proc = subprocess.Popen(
                [nginx_binary(), "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr",
                 "-g", "daemon off;"],
                stdout=log,
            )
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"nginx exited ({self.proc.returncode})"
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("nginx did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGQUIT: nginx's graceful stop (SIGTERM is its fast one).
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines()
