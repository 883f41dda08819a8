"""Maps a database outage during an API call to 503 problem+json instead of a bare 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tierflow_common.transient import is_transient


def install_database_error_handler(app: FastAPI, retry_after_s: int = 5) -> None:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        if not is_transient(exc):
            raise exc
        return JSONResponse(
            {
                "type": "https://tierflow.dev/problems/database-unavailable",
                "title": "Database unavailable",
                "status": 503,
                "detail": "the database did not answer; retry later",
            },
            status_code=503,
            media_type="application/problem+json",
            headers={"Retry-After": str(retry_after_s)},
        )

    for exc_type in (OperationalError, InterfaceError, DBAPIError, OSError):
        app.add_exception_handler(exc_type, handler)
