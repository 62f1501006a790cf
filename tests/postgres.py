"""A real PostgreSQL on a free loopback port for tests: initdb in a temp dir, one database per test, stop at the end."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.mosquitto import free_port
from tests.system_deps import missing_system_dep, require_system_dep


def find_pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb, or initdb on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """initdb + pg_ctl in a temp dir, as the `postgres` OS user when run as root (root may not run PostgreSQL)."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.port = free_port()
        # Not pytest's tmp dir: that is private to root, and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="aula-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        self.sockets.mkdir(parents=True)
        if self.user is not None:
            shutil.chown(self.root, self.user)
            shutil.chown(self.sockets, self.user)
        init = self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        pg_ctl = str(self.bin / "pg_ctl")
        started = self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        if started.returncode:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr or started.stdout}\n{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"aula_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(name="postgres_server", scope="session")
def postgres_server_fixture():
    """One PostgreSQL for the whole test session (initdb takes seconds)."""
    bin_dir = require_system_dep(
        find_pg_bin(), "PostgreSQL is not installed; `apt-get install postgresql` to run the PostgreSQL tests"
    )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_system_dep("psycopg is not installed; pip install 'psycopg[binary]' (the server extra)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        missing_system_dep(f"PostgreSQL could not start here: {exc}")
    yield server
    server.stop()


@pytest.fixture(name="postgres_url")
def postgres_url_fixture(postgres_server):
    """The URL of an empty database of its own for one test."""
    return postgres_server.create_database()
