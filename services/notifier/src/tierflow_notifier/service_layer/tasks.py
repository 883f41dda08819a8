"""Closing the loop: listing (in queue order), acknowledging, reassigning, cancelling and
completing actions; inspecting and retrying deliveries. Completing a revisit (or resolving a
complaint escalation) queues an interaction event for the ingest API in the same transaction,
so it is sent even across a crash."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import DateTime, Float, cast, func, literal, literal_column, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.tables import care_actions, care_deliveries
from tierflow_notifier.adapters import repository
from tierflow_notifier.adapters.webhooks import action_payload, completion_event
from tierflow_notifier.domain.queue import OPEN_STATES, is_overdue, queue_rank
from tierflow_notifier.exceptions import NotifierError
from tierflow_notifier.settings import INGEST_ENDPOINT

_A = care_actions
_D = care_deliveries
ActionOrder = Literal["queue", "id"]


class NotFound(NotifierError):
    pass


class Conflict(NotifierError):
    pass


_STATE_FIELDS = (
    "status",
    "suppressed_reason",
    "outcome",
    "acked_at",
    "completed_at",
    "owner_note",
    "reassigned_at",
    "cancelled_at",
    "cancel_reason",
)


def action_json(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The action as the API shows it: the contract's fields (with the scores it was planned
    with), its state and whether it is overdue at `now`."""
    out = action_payload(row)
    for k in _STATE_FIELDS:
        value = row.get(k)
        out[k] = value.isoformat() if isinstance(value, datetime) else value
    out["overdue"] = is_overdue(row["status"], row.get("due_at"), now)
    return out


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


class BadCursor(NotifierError):
    pass


def queue_cursor(row: dict[str, Any]) -> str:
    """Where a queue-ordered page ended: the last row's queue key, opaque to callers."""
    due = row.get("due_at")
    key = [row["queue_rank"], row.get("value_at_risk"), due.isoformat() if due else None]
    return base64.urlsafe_b64encode(orjson.dumps([*key, row["action_id"]])).decode()


def _after_queue_key(cursor: str) -> Any:
    try:
        rank, risk, due, action_id = orjson.loads(base64.urlsafe_b64decode(cursor))
        key = (
            int(rank),
            None if risk is None else float(risk),
            None if due is None else datetime.fromisoformat(due),
            str(action_id),
        )
    except (ValueError, TypeError) as exc:
        raise BadCursor("use `next` of the previous page with the same order") from exc
    rank, risk, due, action_id = key
    naive = due is not None and due.tzinfo is None
    if naive or "\x00" in action_id or not -(2**15) <= rank < 2**15:
        raise BadCursor("use `next` of the previous page with the same order")
    # The stored columns hold "unknown" as infinities (migration 0013); so does the cursor.
    return tuple_(_A.c.queue_rank, _A.c.queue_risk, _A.c.queue_due, _A.c.action_id) > tuple_(
        literal(rank),
        func.coalesce(-cast(literal(risk, Float), Float), literal_column("'Infinity'::float8")),
        func.coalesce(
            cast(literal(due, DateTime(timezone=True)), DateTime(timezone=True)),
            literal_column("'infinity'::timestamptz"),
        ),
        literal(action_id),
    )


async def list_actions(
    conn: AsyncConnection,
    *,
    status: str | None,
    owner: str | None,
    customer_id: str | None,
    limit: int,
    after: str | None,
    order: ActionOrder = "queue",
) -> list[dict[str, Any]]:
    """A page of actions in queue order (domain/queue.py, by the stored key and its index) or
    by action id; `after` is the `next` of the previous page in the same order."""
    if order == "queue":
        query = select(_A).order_by(
            _A.c.queue_rank, _A.c.queue_risk, _A.c.queue_due, _A.c.action_id
        )
    else:
        query = select(_A).order_by(_A.c.action_id)
    query = query.limit(limit)
    for column, value in (
        (_A.c.status, status),
        (_A.c.owner, owner),
        (_A.c.customer_id, customer_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if after is not None:
        query = query.where(_after_queue_key(after) if order == "queue" else _A.c.action_id > after)
    return [dict(r._mapping) for r in await conn.execute(query)]


def next_cursor(rows: Sequence[dict[str, Any]], limit: int, order: ActionOrder) -> str | None:
    if len(rows) < limit or not rows:
        return None
    return queue_cursor(rows[-1]) if order == "queue" else str(rows[-1]["action_id"])


async def reassign(
    conn: AsyncConnection, action_id: str, owner: str, note: str | None, now: datetime
) -> dict[str, Any]:
    """Give an open or acknowledged action to another person or queue (the same owner again
    changes nothing)."""
    row = await get_action(conn, action_id, lock=True)
    if row["status"] not in OPEN_STATES:
        raise Conflict(f"action {action_id} is {row['status']}; only open work is reassigned")
    if row["owner"] == owner and row["owner_note"] == note:
        return row
    changed = {"owner": owner, "owner_note": note, "reassigned_at": now}
    await conn.execute(update(_A).where(_A.c.action_id == action_id).values(**changed))
    return {**row, **changed}


async def cancel(
    conn: AsyncConnection, action_id: str, reason: str, now: datetime
) -> dict[str, Any]:
    """Cancel an open or acknowledged action: it is never delivered after this (its pending
    and dead deliveries are cancelled in the same transaction, and a delivery in flight is not
    recorded as delivered over it). Cancelling again returns it unchanged."""
    row = await get_action(conn, action_id, lock=True)
    if row["status"] == "cancelled":
        return row
    if row["status"] not in OPEN_STATES:
        raise Conflict(f"action {action_id} is {row['status']}; only open work is cancelled")
    changed = {"status": "cancelled", "cancelled_at": now, "cancel_reason": reason}
    await conn.execute(update(_A).where(_A.c.action_id == action_id).values(**changed))
    await conn.execute(
        update(_D)
        .where(_D.c.action_id == action_id, _D.c.state.in_(("pending", "dead")))
        .values(state="cancelled", lease_until=None, updated_at=now)
    )
    return {**row, **changed, "queue_rank": queue_rank("cancelled", row["priority_class"])}


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
