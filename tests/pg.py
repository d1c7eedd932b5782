# SPDX-License-Identifier: Apache-2.0
"""A private, throw-away PostgreSQL cluster for the tests.

``initdb`` into a temporary directory, ``pg_ctl start`` with the Unix socket in that directory
and no TCP listener, trust authentication (only the socket's directory permissions let anyone
in), one database per ``create_database``. ``stop()`` shuts it down and deletes everything.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` OS user (``runuser -u postgres --``) and the directory is handed to that user.

Durability is switched off (``fsync=off``, ``synchronous_commit=off``): the tests kill clients,
never this server, and the ledger's own crash safety does not depend on the server's fsync.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"


def find_bindir() -> Path | None:
    """``$CARDD_PG_BINDIR``, the newest /usr/lib/postgresql/*/bin, or ``initdb`` on PATH."""
    if env := os.environ.get("CARDD_PG_BINDIR"):
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for c in reversed(candidates):
        if (Path(c) / "initdb").exists():
            return Path(c)
    if found := shutil.which("initdb"):
        return Path(found).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.dir: Path | None = None
        self.port = 0
        self.running = False

    @staticmethod
    def usable() -> str | None:
        """Why the cluster cannot be started here, or ``None``."""
        bindir = find_bindir()
        if bindir is None:
            return "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install 'psycopg[binary]>=3.1,<4')"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                return f"running as root and there is no '{SERVER_USER}' user to run the server"
            if not shutil.which("runuser"):
                return "running as root and runuser is missing"
        return None

    def _cmd(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVER_USER, "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        assert self.dir is not None
        proc = subprocess.run(
            self._cmd(*args), cwd=self.dir, capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr}\n{tail}"
            )

    def start(self) -> PrivatePostgres:
        assert self.bindir is not None, "no PostgreSQL binaries"
        self.dir = Path(tempfile.mkdtemp(prefix="cardd-test-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = self.dir / "data"
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.port = free_port()
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-p {self.port}",
                f"-k {self.dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=60",
                "-c shared_buffers=32MB",
            ]
        )
        self._options = options
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        assert self.dir is not None and self.bindir is not None
        self._run(
            str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.dir / "data"),
            "-l", str(self.dir / "server.log"), "-o", self._options,
        )
        self.running = True

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server but keep its data (``restart()`` or ``start_server()`` brings it back)."""
        assert self.dir is not None and self.bindir is not None
        self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.dir / "data"), "-m", mode, "-w")
        self.running = False

    def start_server(self) -> None:
        self._pg_ctl_start()

    def url(self, dbname: str = "postgres") -> str:
        assert self.dir is not None
        return f"postgresql://postgres@/{dbname}?host={self.dir}&port={self.port}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.running and self.bindir is not None:
            with contextlib.suppress(Exception):
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.dir / "data"),
                    "-m",
                    "immediate",
                    "-w",
                )
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
