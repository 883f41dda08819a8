"""RFC 9457 problem+json: the one helper every service answers errors with, and the mapping of a
database outage during an API call to 503 instead of a bare 500."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tierflow_common.transient import is_transient

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://tierflow.dev/problems/"


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem document; `extra` members (e.g. `errors`, `required_role`) are added as is."""
    body = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason", "code"],
                "properties": {
                    "field": {"type": "string"},
                    "reason": {"type": "string"},
                    "code": {"type": "string"},
                },
            },
        },
    },
}


def install_database_error_handler(app: FastAPI, retry_after_s: int = 5) -> None:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        if not is_transient(exc):
            raise exc
        return problem(
            503,
            "database-unavailable",
            "Database unavailable",
            "the database did not answer; retry later",
            headers={"Retry-After": str(retry_after_s)},
        )

    for exc_type in (OperationalError, InterfaceError, DBAPIError, OSError):
        app.add_exception_handler(exc_type, handler)
