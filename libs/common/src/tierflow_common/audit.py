"""The audit log: every call of an `operate` or `admin` route of any service — who (key id and
name), what (method and route), target (the route's path parameters), when, and the outcome
(HTTP status) — denied and failed calls included. One table for all services; the classifier
serves it (`GET /v1/audit`), `tierflow audit` prints it.

The row is written before the response leaves (so a caller that saw the answer finds the row);
if the database is away then, it is kept in memory and written as soon as it is back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tierflow_common.backoff import Backoff
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import audit_log
from tierflow_common.settings import DatabaseSettings

log = structlog.get_logger(__name__)
AUDIT_SLOT = "tierflow.audit"  # the scope key the middleware hands `requires` the call list in


@dataclass(frozen=True)
class AuditCall:
    key_id: str | None  # None: no key, or an unknown or revoked one
    key_name: str | None
    role: str  # the role the route needs
    method: str
    route: str  # the route's template, e.g. /v1/actions/{action_id}/complete
    target: dict[str, str]  # its path parameters, e.g. {"action_id": "..."}


class AuditRecorder(Protocol):
    async def record(self, call: AuditCall, status: int) -> None: ...


class AuditLog:
    def __init__(self, engine: AsyncEngine, *, service: str, max_pending: int = 10_000) -> None:
        self._engine = engine
        self._service = service
        self._pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self._retry: asyncio.Task[None] | None = None

    async def record(self, call: AuditCall, status: int) -> None:
        row = {
            "at": datetime.now(UTC),
            "service": self._service,
            "key_id": call.key_id,
            "key_name": call.key_name,
            "role": call.role,
            "method": call.method,
            "route": call.route,
            "target": call.target,
            "status": status,
        }
        try:
            await self._insert([row])
        except Exception as exc:
            log.warning("audit_write_deferred", error=str(exc), route=call.route)
            self._pending.append(row)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._drain())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(audit_log), rows)

    async def _drain(self) -> None:
        backoff = Backoff(first=0.5, cap=30.0)
        while self._pending:
            rows = list(self._pending)
            try:
                await self._insert(rows)
            except Exception:
                await backoff.wait()
                continue
            for _ in rows:
                self._pending.popleft()
            log.info("audit_written_late", rows=len(rows))


class AuditMiddleware:
    """ASGI middleware: hands each request a list `requires` appends an audited call to, and
    records that call with the status the application answered (500 if it raised)."""

    def __init__(self, app: ASGIApp, log: AuditRecorder) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        calls: list[AuditCall] = []
        scope[AUDIT_SLOT] = calls
        recorded = False

        async def send_audited(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and calls and not recorded:
                recorded = True
                await self.log.record(calls[0], int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if calls and not recorded:
                await self.log.record(calls[0], 500)
            raise


async def read_audit(
    conn: AsyncConnection,
    *,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows, newest first; `before` is the `audit_id` a previous page ended at."""
    query = select(audit_log).order_by(audit_log.c.audit_id.desc()).limit(limit)
    if key_id is not None:
        query = query.where(audit_log.c.key_id == key_id)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if until is not None:
        query = query.where(audit_log.c.at < until)
    if before is not None:
        query = query.where(audit_log.c.audit_id < before)
    return [dict(r._mapping) for r in await conn.execute(query)]


def read_audit_sync(db: DatabaseSettings, **filters: Any) -> list[dict[str, Any]]:
    """`read_audit` outside an event loop (the CLI)."""

    async def main() -> list[dict[str, Any]]:
        engine = create_engine(db)
        try:
            async with engine.connect() as conn:
                return await read_audit(conn, **filters)
        finally:
            await engine.dispose()

    return asyncio.run(main())
