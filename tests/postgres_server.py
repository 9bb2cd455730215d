"""A real PostgreSQL on 127.0.0.1 for the tests (Debian: `apt-get install postgresql`).

`initdb` makes a throw-away cluster in a temporary directory and `pg_ctl` runs it on a free
port (fsync off: an outage here kills the server process, never the OS). initdb refuses to
run as root, so as root the cluster belongs to the `postgres` user and every server command
runs through `runuser -u postgres --`.
`stop()` and `start()` simulate an outage and a recovery on the same port. A missing
installation is a failure, never a skip.

Fixtures: `postgres_server` (one cluster per test module) and `postgres_url` (a fresh database
in it for each test, the server started again if a test left it stopped).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

INSTALL_HINT = (
    "PostgreSQL is not installed: the audit tests need a real server "
    "(Debian/Ubuntu: apt-get install -y postgresql; see README, 'Test it')"
)
USER = "guardline"
PASSWORD = "audit-secret"
_databases = itertools.count(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def find_bin_dir() -> Path | None:
    """Debian keeps the server binaries in /usr/lib/postgresql/<version>/bin (not on PATH)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    versions = sorted((int(b.parent.name), b) for b in found if b.parent.name.isdigit())
    if versions:
        return versions[-1][1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        # Not pytest's tmp_path: under root that directory is closed to the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="guardline-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        if self.as_root:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        password_file = self.dir / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_root:
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", USER,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise AssertionError(f"{tool} failed: {done.stdout}{done.stderr}{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
        except OSError:
            return False

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options)

    def stop(self) -> None:
        """Stop at once (connections are cut, as when a database host goes away)."""
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def create_database(self) -> str:
        name = f"audit_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    if not postgres_server.running:
        postgres_server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            return postgres_server.create_database()
        except psycopg.OperationalError:
            # Just restarted and still recovering: try again shortly.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
