"""Servers of a scenario's own, for the scenarios that take one down: a PostgreSQL server or a
Tansu broker on a free port, stopped and started again on the same port (and, for PostgreSQL,
the same data directory), with the session's other server beside it (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx

from tests.support import Servers, ServiceProcess
from tierflow_common.embedded import EmbeddedPostgres, EmbeddedTansu, free_port


@contextmanager
def dedicated_postgres(servers: Servers) -> Iterator[tuple[EmbeddedPostgres, Servers]]:
    """A PostgreSQL server of the scenario's own, and Servers with it and the session's broker.

    Its data directory is not under pytest's basetemp, for the reason tests/conftest.py gives
    (as root, the server may run as a user another pytest session would lock out)."""
    base = Path(tempfile.mkdtemp(prefix="tierflow-chaos-pg-"))
    pg = EmbeddedPostgres(base / "pgdata", port=free_port(), log_file=base / "postgres.log")
    pg.start()
    try:
        yield pg, replace(servers, postgres_admin_url=pg.url, create_database=pg.create_database)
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def dedicated_tansu(servers: Servers, log_dir: Path) -> Iterator[tuple[EmbeddedTansu, Servers]]:
    """A Tansu broker of the scenario's own, and Servers with it and the session's PostgreSQL."""
    tansu = EmbeddedTansu(port=free_port(), log_file=log_dir / "tansu.log")
    tansu.start()
    try:
        yield tansu, replace(servers, bootstrap_servers=tansu.bootstrap_servers)
    finally:
        tansu.stop()


async def readiness(svc: ServiceProcess) -> tuple[int, dict[str, str]]:
    """A service's /readyz: its status code and the state of each check."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(f"{svc.url}/readyz")
    return resp.status_code, dict(resp.json().get("checks", {}))


async def metric(svc: ServiceProcess, name: str, **labels: str) -> float:
    """The sum of a service's /metrics samples named `name` whose labels include `labels`."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{svc.url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total


async def until(
    probe: Callable[[], Awaitable[bool]], what: str, timeout: float, every: float = 0.2
) -> None:
    """Poll `probe` until it answers true (fails past `timeout`)."""
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        await asyncio.sleep(every)
