"""Child-process helpers: own session (so Ctrl-C reaches only the supervisor, which then stops
children in order) and death with the parent (so a killed supervisor leaves nothing behind)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _detach_and_tie_to_parent() -> None:
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def spawn(
    args: list[str],
    *,
    log_file: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log: IO[Any] = open(log_file, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    try:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            user=user,
            cwd=cwd,
            preexec_fn=_detach_and_tie_to_parent,  # noqa: PLW1509 - no threads exist yet here
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Signal a child, wait, then kill it; return its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
