"""Closing the loop: listing, acknowledging and completing actions; inspecting and retrying
deliveries. Completing a revisit (or resolving a complaint escalation) queues an interaction
event for the ingest API in the same transaction, so it is sent even across a crash."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.tables import care_actions, care_deliveries
from tierflow_notifier.adapters import repository
from tierflow_notifier.adapters.webhooks import action_payload, completion_event
from tierflow_notifier.exceptions import NotifierError
from tierflow_notifier.settings import INGEST_ENDPOINT

_A = care_actions
_D = care_deliveries


class NotFound(NotifierError):
    pass


class Conflict(NotifierError):
    pass


def action_json(row: dict[str, Any]) -> dict[str, Any]:
    out = action_payload(row)
    for k in ("status", "suppressed_reason", "outcome", "acked_at", "completed_at"):
        value = row.get(k)
        out[k] = value.isoformat() if isinstance(value, datetime) else value
    return out


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


async def list_actions(
    conn: AsyncConnection,
    *,
    status: str | None,
    owner: str | None,
    customer_id: str | None,
    limit: int,
    after: str | None,
) -> list[dict[str, Any]]:
    query = select(_A).order_by(_A.c.action_id).limit(limit)
    for column, value in (
        (_A.c.status, status),
        (_A.c.owner, owner),
        (_A.c.customer_id, customer_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if after is not None:
        query = query.where(_A.c.action_id > after)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def get_action(
    conn: AsyncConnection, action_id: str, *, lock: bool = False
) -> dict[str, Any]:
    query = select(_A).where(_A.c.action_id == action_id)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"no care action {action_id}")
    return dict(row._mapping)


async def ack(conn: AsyncConnection, action_id: str, now: datetime) -> dict[str, Any]:
    row = await get_action(conn, action_id, lock=True)
    if row["status"] == "acked":
        return row  # acknowledging twice is harmless
    if row["status"] != "open":
        raise Conflict(f"action {action_id} is {row['status']}; only an open action is acked")
    await conn.execute(
        update(_A).where(_A.c.action_id == action_id).values(status="acked", acked_at=now)
    )
    return {**row, "status": "acked", "acked_at": now}


async def complete(
    conn: AsyncConnection,
    action_id: str,
    outcome: str,
    now: datetime,
    *,
    report_to_ingest: bool,
) -> tuple[dict[str, Any], bool]:
    """Mark done with an outcome; return the row and whether an ingest event was queued."""
    row = await get_action(conn, action_id, lock=True)
    if row["status"] == "done":
        if row["outcome"] != outcome:
            raise Conflict(f"action {action_id} was already completed as {row['outcome']!r}")
        return row, False  # a retried call changes nothing
    if row["status"] not in ("open", "acked"):
        raise Conflict(f"action {action_id} is {row['status']}; it cannot be completed")
    await conn.execute(
        update(_A)
        .where(_A.c.action_id == action_id)
        .values(status="done", outcome=outcome, completed_at=now)
    )
    row = {**row, "status": "done", "outcome": outcome, "completed_at": now}
    queued = report_to_ingest and completion_event(row) is not None
    if queued:
        await repository.insert_deliveries(
            conn, [repository.delivery_row(action_id, INGEST_ENDPOINT, row["priority"], now)]
        )
    return row, queued


async def list_deliveries(
    conn: AsyncConnection,
    *,
    state: str | None,
    endpoint: str | None,
    action_id: str | None,
    limit: int,
    after: str | None,
) -> list[dict[str, Any]]:
    query = select(_D).order_by(_D.c.delivery_id).limit(limit)
    for column, value in (
        (_D.c.state, state),
        (_D.c.endpoint, endpoint),
        (_D.c.action_id, action_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if after is not None:
        query = query.where(_D.c.delivery_id > after)
    return [dict(r._mapping) for r in await conn.execute(query)]


async def retry_deliveries(
    conn: AsyncConnection, delivery_ids: Sequence[str] | None, endpoint: str | None, now: datetime
) -> list[dict[str, Any]]:
    """Put dead deliveries back to pending with a fresh attempt budget; return those moved."""
    stmt = (
        update(_D)
        .where(_D.c.state == "dead")
        .values(state="pending", attempts=0, next_attempt_at=now, lease_until=None, updated_at=now)
        .returning(_D.c.delivery_id, _D.c.endpoint, _D.c.action_id)
    )
    if delivery_ids is not None:
        stmt = stmt.where(_D.c.delivery_id.in_(list(delivery_ids)))
    if endpoint is not None:
        stmt = stmt.where(_D.c.endpoint == endpoint)
    return [dict(r._mapping) for r in await conn.execute(stmt)]


async def get_delivery(conn: AsyncConnection, delivery_id: str) -> dict[str, Any]:
    row = (await conn.execute(select(_D).where(_D.c.delivery_id == delivery_id))).first()
    if row is None:
        raise NotFound(f"no delivery {delivery_id}")
    return dict(row._mapping)
