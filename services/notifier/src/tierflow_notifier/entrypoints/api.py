"""Notifier API: care actions as tasks (the queue, ack, reassign, cancel, complete) and webhook
deliveries (list, operator retry of dead ones)."""

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

ActionStatus = Literal["open", "acked", "done", "suppressed", "cancelled"]
DeliveryState = Literal["pending", "delivered", "dead", "cancelled"]
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


class ReassignBody(BaseModel):
    owner: Annotated[
        str, Field(min_length=1, max_length=200, description="Person, queue or role, e.g. queue:am")
    ]
    note: Annotated[str | None, Field(default=None, max_length=2000)] = None


class CancelBody(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=500, description="Why, in words")]


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
        summary="Care actions, cursor-paged in queue order (or by action id)",
        description="`sort=queue` (default): open/acked first, then priority class (critical, "
        "service, marketing), value at risk descending (unknown last), due time (none last), "
        "action id. `sort=id`: by action id. `order` is accepted as an alias of `sort`.",
        responses={422: _PROBLEM},
        response_model=None,
        dependencies=READ,
    )
    async def get_actions(
        status: Annotated[ActionStatus | None, Query(description="Only this status")] = None,
        owner: Annotated[str | None, Query(description="Only this owner or queue")] = None,
        customer: Annotated[str | None, Query(description="Only this customer's actions")] = None,
        sort: Annotated[
            tasks.ActionOrder | None, Query(description="queue (default) or id")
        ] = None,
        order: Annotated[
            tasks.ActionOrder | None,
            Query(description="Alias of `sort` (older clients)", deprecated=True),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        after: Annotated[
            str | None, Query(description="Cursor: `next` of the previous page")
        ] = None,
    ) -> dict[str, Any] | JSONResponse:
        if sort is not None and order is not None and sort != order:
            reason = f"sort={sort} and its alias order={order} disagree; send one"
            return problem(
                422,
                "conflicting-sort",
                "Conflicting sort",
                reason,
                errors=[{"field": "order", "reason": reason, "code": "conflicts_with_sort"}],
            )
        chosen: tasks.ActionOrder = sort or order or "queue"
        try:
            async with engine.connect() as conn:
                rows = await tasks.list_actions(
                    conn,
                    status=status,
                    owner=owner,
                    customer_id=customer,
                    limit=limit,
                    after=after,
                    order=chosen,
                )
        except tasks.BadCursor as exc:
            reason = str(exc)
            return problem(
                422,
                "bad-cursor",
                "Invalid cursor",
                reason,
                errors=[{"field": "after", "reason": reason, "code": "bad_cursor"}],
            )
        now = clock()
        return {
            "items": [tasks.action_json(r, now) for r in rows],
            "next": tasks.next_cursor(rows, limit, chosen),
        }

    @router.get(
        "/actions/{action_id}", tags=["actions"], responses={404: _PROBLEM}, dependencies=READ
    )
    async def get_action(action_id: str) -> dict[str, Any]:
        async with engine.connect() as conn:
            return tasks.action_json(await tasks.get_action(conn, action_id), clock())

    @router.post(
        "/actions/{action_id}/reassign",
        dependencies=OPERATE,
        tags=["actions"],
        summary="Give an open or acknowledged action to another owner",
        responses={404: _PROBLEM, 409: _PROBLEM},
    )
    async def reassign_action(action_id: str, body: ReassignBody) -> dict[str, Any]:
        now = clock()
        async with engine.begin() as conn:
            row = await tasks.reassign(conn, action_id, body.owner, body.note, now)
        return tasks.action_json(row, now)

    @router.post(
        "/actions/{action_id}/cancel",
        dependencies=OPERATE,
        tags=["actions"],
        summary="Cancel an open or acknowledged action: never delivered (idempotent)",
        responses={404: _PROBLEM, 409: _PROBLEM},
    )
    async def cancel_action(action_id: str, body: CancelBody) -> dict[str, Any]:
        now = clock()
        async with engine.begin() as conn:
            row = await tasks.cancel(conn, action_id, body.reason, now)
        return tasks.action_json(row, now)

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
        return tasks.action_json(row, clock())

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
        return {**tasks.action_json(row, clock()), "reported": queued}

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
