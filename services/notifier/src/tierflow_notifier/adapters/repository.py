"""Care actions, the contact ledger and deliveries in PostgreSQL.

The unique (trigger, rule) key and the action-id primary key make creation exactly-once; the
delivery rows make webhook delivery durable, retried and inspectable.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, any_, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.tables import care_actions, care_deliveries, contact_ledger
from tierflow_notifier.domain.playbooks import ACTION_NAMESPACE
from tierflow_notifier.domain.pressure import Contact

OPEN_STATES = ("open", "acked")


def _any(values: Sequence[str]) -> Any:
    """`= ANY(:array)`: one bind parameter whatever the count, so the statement compiles once
    (an IN list renders one parameter per value, at every batch)."""
    return any_(bindparam(None, list(values), type_=ARRAY(Text)))


def delivery_id_for(action_id: str, endpoint: str) -> str:
    return str(uuid.uuid5(ACTION_NAMESPACE, f"delivery|{action_id}|{endpoint}"))


async def lock_customers(conn: AsyncConnection, customer_ids: Sequence[str]) -> None:
    """Serialize contact decisions per customer across transactions and processes, so two
    concurrent batches cannot both take a customer's last cap slot. Sorted: no deadlocks."""
    if not customer_ids:
        return
    await conn.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM ("
            " SELECT DISTINCT hashtextextended(c, 7413) AS k"
            " FROM unnest(CAST(:ids AS text[])) AS c ORDER BY k) AS keys"
        ),
        {"ids": sorted(set(customer_ids))},
    )


async def existing_action_ids(conn: AsyncConnection, action_ids: Sequence[str]) -> set[str]:
    if not action_ids:
        return set()
    rows = await conn.execute(
        select(care_actions.c.action_id).where(care_actions.c.action_id == _any(action_ids))
    )
    return {r.action_id for r in rows}


async def load_ledger(
    conn: AsyncConnection, customer_ids: Sequence[str], since: datetime
) -> dict[str, list[Contact]]:
    out: dict[str, list[Contact]] = {}
    if not customer_ids:
        return out
    rows = await conn.execute(
        select(
            contact_ledger.c.customer_id,
            contact_ledger.c.kind,
            contact_ledger.c.priority_class,
            contact_ledger.c.at,
        ).where(
            contact_ledger.c.customer_id == _any(sorted(set(customer_ids))),
            contact_ledger.c.at > since,
        )
    )
    for r in rows:
        out.setdefault(r.customer_id, []).append(Contact(r.kind, r.priority_class, r.at))
    return out


async def insert_actions(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert actions; return the ids that did not exist (redelivered triggers drop out)."""
    if not rows:
        return set()
    # executemany + RETURNING: SQLAlchemy batches it ("insertmanyvalues") with one compiled
    # statement, far cheaper than compiling a multi-row VALUES clause per batch.
    stmt = insert(care_actions).on_conflict_do_nothing().returning(care_actions.c.action_id)
    result = await conn.execute(stmt, list(rows))
    return {r.action_id for r in result}


async def insert_ledger(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(contact_ledger).on_conflict_do_nothing(), list(rows))


async def insert_deliveries(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(care_deliveries).on_conflict_do_nothing(), list(rows))


def delivery_row(
    action_id: str, endpoint: str, priority: int, not_before: datetime
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id_for(action_id, endpoint),
        "action_id": action_id,
        "endpoint": endpoint,
        "state": "pending",
        "priority": priority,
        "attempts": 0,
        "next_attempt_at": not_before,
    }


# JSONB columns come back as their JSON text: the webhook body embeds them as they are
# (orjson.Fragment) instead of decoding and re-encoding them for every delivery.
RAW_JSON_COLUMNS = ("explanation", "details")
_CLAIM_COLUMNS = ", ".join(
    f"a.{c.name}::text AS {c.name}" if c.name in RAW_JSON_COLUMNS else f"a.{c.name}"
    for c in care_actions.c
)


async def claim_deliveries(
    conn: AsyncConnection, endpoint: str, *, now: datetime, lease_until: datetime, limit: int
) -> list[dict[str, Any]]:
    """Lease up to `limit` due deliveries of one endpoint, most urgent first, with their action
    (its RAW_JSON_COLUMNS as JSON text).

    SKIP LOCKED plus the lease let several workers or processes share an endpoint's backlog
    without sending a row twice at once; a crashed worker's rows come back when the lease ends.
    """
    rows = await conn.execute(
        text(
            f"""
            WITH claimed AS (
              UPDATE care_deliveries AS d SET lease_until = :lease_until, updated_at = :now
              WHERE d.delivery_id IN (
                SELECT delivery_id FROM care_deliveries
                WHERE endpoint = :endpoint AND state = 'pending' AND next_attempt_at <= :now
                  AND (lease_until IS NULL OR lease_until < :now)
                ORDER BY priority, next_attempt_at
                LIMIT :limit
                FOR UPDATE SKIP LOCKED)
              RETURNING d.delivery_id, d.action_id, d.attempts
            )
            SELECT c.delivery_id, c.attempts, {_CLAIM_COLUMNS}
            FROM claimed AS c JOIN care_actions AS a ON a.action_id = c.action_id
            """  # noqa: S608 - column names from our own table definition
        ),
        {"endpoint": endpoint, "now": now, "lease_until": lease_until, "limit": limit},
    )
    return [dict(r._mapping) for r in rows]


async def record_results(conn: AsyncConnection, results: Sequence[dict[str, Any]]) -> None:
    """Write finished attempts: b_id, b_state, b_attempts, b_next, b_error, b_delivered_at."""
    if not results:
        return
    await conn.execute(
        update(care_deliveries)
        .where(care_deliveries.c.delivery_id == bindparam("b_id"))
        .values(
            state=bindparam("b_state"),
            attempts=bindparam("b_attempts"),
            next_attempt_at=bindparam("b_next"),
            last_error=bindparam("b_error"),
            delivered_at=bindparam("b_delivered_at"),
            lease_until=None,
            updated_at=func.now(),
        ),
        list(results),
    )


async def unlease(conn: AsyncConnection, delivery_ids: Sequence[str]) -> None:
    """Give leased, unsent deliveries back (a stopping worker), so others may send them now."""
    if delivery_ids:
        await conn.execute(
            update(care_deliveries)
            .where(care_deliveries.c.delivery_id.in_(list(delivery_ids)))
            .values(lease_until=None)
        )


async def release_backlog(conn: AsyncConnection, endpoint: str, now: datetime) -> int:
    """Make an endpoint's failed-and-waiting deliveries due now (it answered again): their
    backoff protected a sick endpoint, and now only delays what it can take. Deliveries held
    for a later time by the contact policy (never attempted) keep their time."""
    result = await conn.execute(
        update(care_deliveries)
        .where(
            care_deliveries.c.endpoint == endpoint,
            care_deliveries.c.state == "pending",
            care_deliveries.c.attempts > 0,
            care_deliveries.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount or 0)


async def next_delivery_due(conn: AsyncConnection, endpoint: str) -> datetime | None:
    value = await conn.scalar(
        select(func.min(care_deliveries.c.next_attempt_at)).where(
            care_deliveries.c.endpoint == endpoint, care_deliveries.c.state == "pending"
        )
    )
    return value if isinstance(value, datetime) else None
