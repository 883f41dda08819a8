"""Notifier API: care actions as tasks (list, ack, complete) and webhook deliveries (list,
operator retry of dead ones)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.auth import Role, requires
from tierflow_common.errors_http import problem
from tierflow_notifier.service_layer import tasks
from tierflow_notifier.settings import INGEST_ENDPOINT

ActionStatus = Literal["open", "acked", "done", "suppressed"]
DeliveryState = Literal["pending", "delivered", "dead"]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
READ = [requires(Role.READ)]
OPERATE = [requires(Role.OPERATE)]


class CompleteBody(BaseModel):
    outcome: Annotated[
        str,
        Field(
            min_length=1,
            max_length=200,
            description="What happened, e.g. done, resolved, unreachable, declined. "
            "Completing a revisit or follow-up reports revisit_done to the ingest API; "
            "an escalation completed as 'resolved' reports complaint_resolved.",
        ),
    ]


class RetryBody(BaseModel):
    endpoint: str | None = Field(default=None, description="Only this endpoint's dead deliveries")


def install_error_handlers(app: FastAPI) -> None:
    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return problem(404, "not-found", "Not found", str(exc))

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return problem(409, "conflict", "Conflict", str(exc))

    app.add_exception_handler(tasks.NotFound, not_found)
    app.add_exception_handler(tasks.Conflict, conflict)


def build_router(
    engine: AsyncEngine,
    *,
    clock: Callable[[], datetime],
    report_to_ingest: bool = False,
    wake: Callable[[str], None] = lambda _endpoint: None,
) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get(
        "/actions",
        tags=["actions"],
        summary="Care actions, cursor-paged by action id",
        dependencies=READ,
    )
    async def get_actions(
        status: Annotated[ActionStatus | None, Query(description="Only this status")] = None,
        owner: Annotated[str | None, Query(description="Only this owner or queue")] = None,
        customer: Annotated[str | None, Query(description="Only this customer's actions")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[
            str | None, Query(description="Cursor: `next` of the previous page")
        ] = None,
    ) -> dict[str, Any]:
        async with engine.connect() as conn:
            rows = await tasks.list_actions(
                conn, status=status, owner=owner, customer_id=customer, limit=limit, after=after
            )
        items = [tasks.action_json(r) for r in rows]
        return {"items": items, "next": items[-1]["action_id"] if len(items) == limit else None}

    @router.get(
        "/actions/{action_id}", tags=["actions"], responses={404: _PROBLEM}, dependencies=READ
    )
    async def get_action(action_id: str) -> dict[str, Any]:
        async with engine.connect() as conn:
            return tasks.action_json(await tasks.get_action(conn, action_id))

    @router.post(
        "/actions/{action_id}/ack",
        dependencies=OPERATE,
        tags=["actions"],
        summary="Acknowledge an open action (idempotent)",
        responses={404: _PROBLEM, 409: _PROBLEM},
    )
    async def ack_action(action_id: str) -> dict[str, Any]:
        async with engine.begin() as conn:
            row = await tasks.ack(conn, action_id, clock())
        return tasks.action_json(row)

    @router.post(
        "/actions/{action_id}/complete",
        dependencies=OPERATE,
        tags=["actions"],
        summary="Complete an action with its outcome (idempotent for the same outcome)",
        responses={404: _PROBLEM, 409: _PROBLEM},
    )
    async def complete_action(action_id: str, body: CompleteBody) -> dict[str, Any]:
        async with engine.begin() as conn:
            row, queued = await tasks.complete(
                conn, action_id, body.outcome, clock(), report_to_ingest=report_to_ingest
            )
        if queued:
            wake(INGEST_ENDPOINT)
        return {**tasks.action_json(row), "reported": queued}

    @router.get(
        "/deliveries",
        tags=["deliveries"],
        summary="Deliveries, cursor-paged by id",
        dependencies=READ,
    )
    async def get_deliveries(
        state: Annotated[DeliveryState | None, Query(description="e.g. dead")] = None,
        endpoint: Annotated[str | None, Query()] = None,
        action: Annotated[str | None, Query(description="Only this action's deliveries")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[str | None, Query(description="Cursor: `next`")] = None,
    ) -> dict[str, Any]:
        async with engine.connect() as conn:
            rows = await tasks.list_deliveries(
                conn, state=state, endpoint=endpoint, action_id=action, limit=limit, after=after
            )
        items = [tasks.delivery_json(r) for r in rows]
        return {"items": items, "next": items[-1]["delivery_id"] if len(items) == limit else None}

    @router.post(
        "/deliveries/{delivery_id}/retry",
        dependencies=OPERATE,
        tags=["deliveries"],
        summary="Send a dead delivery again (fresh attempt budget)",
        responses={404: _PROBLEM, 409: _PROBLEM},
    )
    async def retry_delivery(delivery_id: str) -> dict[str, Any]:
        async with engine.begin() as conn:
            current = await tasks.get_delivery(conn, delivery_id)
            moved = await tasks.retry_deliveries(conn, [delivery_id], None, clock())
        if not moved:
            raise tasks.Conflict(f"delivery {delivery_id} is {current['state']}, not dead")
        wake(str(current["endpoint"]))
        return {"retried": len(moved), "items": moved}

    @router.post(
        "/deliveries:retry-dead",
        dependencies=OPERATE,
        tags=["deliveries"],
        summary="Send every dead delivery (of one endpoint) again",
    )
    async def retry_dead(body: RetryBody) -> dict[str, Any]:
        async with engine.begin() as conn:
            moved = await tasks.retry_deliveries(conn, None, body.endpoint, clock())
        for endpoint in {str(m["endpoint"]) for m in moved}:
            wake(endpoint)
        return {"retried": len(moved)}

    return router
