"""`GET /v1/audit`: the audit log of every service's `operate` and `admin` calls. The rows of all
services are in one table of the shared database, so one service serves them: this one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.audit import read_audit
from tierflow_common.auth import Role, requires


def build_audit_router(engine: AsyncEngine) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["audit"])

    @router.get(
        "/audit",
        summary="Operate and admin calls of every service, newest first, cursor-paged",
        dependencies=[requires(Role.ADMIN)],
    )
    async def get_audit(
        key: Annotated[str | None, Query(description="Only calls made with this key id")] = None,
        since: Annotated[datetime | None, Query(description="Only calls at or after")] = None,
        until: Annotated[datetime | None, Query(description="Only calls before")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[int | None, Query(description="`next` of the previous page")] = None,
    ) -> dict[str, Any]:
        async with engine.connect() as conn:
            rows = await read_audit(
                conn, key_id=key, since=since, until=until, before=cursor, limit=limit
            )
        return {"items": rows, "next": rows[-1]["audit_id"] if len(rows) == limit else None}

    return router
