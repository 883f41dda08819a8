"""Care actions, the contact ledger and deliveries in PostgreSQL.

The unique (trigger, rule) key and the action-id primary key make creation exactly-once; the
delivery rows make webhook delivery durable, retried and inspectable.

What runs for every batch or every claim goes straight through asyncpg with array parameters
(one statement of fixed text per kind, prepared once per connection), in the caller's
transaction; JSON columns travel as text. The rare operator paths stay on SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.raw import raw_connection
from tierflow_common.db.tables import care_actions, care_deliveries
from tierflow_notifier.domain.playbooks import stable_id
from tierflow_notifier.domain.pressure import Contact

OPEN_STATES = ("open", "acked")


def _any(values: Sequence[str]) -> Any:
    """`= ANY(:array)`: one bind parameter whatever the count, so the statement compiles once
    (an IN list renders one parameter per value, at every batch)."""
    return any_(bindparam(None, list(values), type_=ARRAY(Text)))


def delivery_id_for(action_id: str, endpoint: str) -> str:
    return stable_id(f"delivery|{action_id}|{endpoint}")


def dumps(value: Any) -> str:
    """JSON text for a JSONB column, as the engine's serializer writes it."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # a type orjson refuses (e.g. a float subclass): what json does
        return json.dumps(value)


_LOCK_CUSTOMERS = (
    "SELECT pg_advisory_xact_lock(k) FROM ("
    " SELECT DISTINCT hashtextextended(c, 7413) AS k"
    " FROM unnest($1::text[]) AS c ORDER BY k) AS keys"
)


async def lock_customers(conn: AsyncConnection, customer_ids: Sequence[str]) -> None:
    """Serialize contact decisions per customer across transactions and processes, so two
    concurrent batches cannot both take a customer's last cap slot. Sorted: no deadlocks."""
    if not customer_ids:
        return
    raw = await raw_connection(conn)
    await raw.execute(_LOCK_CUSTOMERS, sorted(set(customer_ids)))


@dataclass
class DecisionInputs:
    """What deciding a batch of planned actions needs, read in one statement."""

    existing: set[str] = field(default_factory=set)  # planned action ids already created
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # reachability columns
    ledger: dict[str, list[Contact]] = field(default_factory=dict)  # contacts since `since`


# One round trip instead of three: the part number says which query a row comes from.
_DECISION_INPUTS = """
SELECT 0 AS part, action_id AS id, NULL AS kind, NULL AS priority_class, NULL::timestamptz AS at,
       NULL AS timezone, NULL AS preferred_channel, NULL::boolean AS marketing_consent,
       NULL AS channel_consent, NULL AS labels
FROM care_actions WHERE action_id = ANY($1::text[])
UNION ALL
SELECT 1, customer_id, kind, priority_class, at, NULL, NULL, NULL, NULL, NULL
FROM contact_ledger WHERE customer_id = ANY($2::text[]) AND at > $3
UNION ALL
SELECT 2, customer_id, NULL, NULL, NULL, timezone, preferred_channel, marketing_consent,
       channel_consent::text, labels::text
FROM notifier_contacts WHERE customer_id = ANY($2::text[])
"""


async def decision_inputs(
    conn: AsyncConnection, action_ids: Sequence[str], customer_ids: Sequence[str], since: datetime
) -> DecisionInputs:
    """Which of `action_ids` exist, and the customers' contact rows (the columns reachability
    reads, JSON decoded) and ledger entries after `since`. Take the customers' locks first."""
    out = DecisionInputs()
    if not action_ids and not customer_ids:
        return out
    raw = await raw_connection(conn)
    rows = await raw.fetch(_DECISION_INPUTS, list(action_ids), sorted(set(customer_ids)), since)
    for part, key, kind, priority_class, at, tz, channel, consent, channels, labels in rows:
        if part == 0:
            out.existing.add(key)
        elif part == 1:
            out.ledger.setdefault(key, []).append(Contact(kind, priority_class, at))
        else:
            out.contacts[key] = {
                "customer_id": key,
                "timezone": tz,
                "preferred_channel": channel,
                "marketing_consent": consent,
                "channel_consent": orjson.loads(channels),
                "labels": orjson.loads(labels),
            }
    return out


# (column, array type) in insert order; JSON columns are sent as text and cast.
Columns = Sequence[tuple[str, str]]
_ACTION_COLUMNS: Columns = (
    ("action_id", "text"),
    ("trigger_event_id", "text"),
    ("rule_id", "text"),
    ("customer_id", "text"),
    ("kind", "text"),
    ("priority", "int"),
    ("priority_class", "text"),
    ("reason", "text"),
    ("status", "text"),
    ("suppressed_reason", "text"),
    ("owner", "text"),
    ("channel", "text"),
    ("deliver_at", "timestamptz"),
    ("due_at", "timestamptz"),
    ("explanation", "jsonb"),
    ("details", "jsonb"),
    ("created_at", "timestamptz"),
    ("churn_probability", "float8"),
    ("clv", "float8"),
    ("value_at_risk", "float8"),
    ("trace_context", "jsonb"),
)
_LEDGER_COLUMNS: Columns = (
    ("action_id", "text"),
    ("customer_id", "text"),
    ("kind", "text"),
    ("priority_class", "text"),
    ("channel", "text"),
    ("at", "timestamptz"),
)
_DELIVERY_COLUMNS: Columns = (
    ("delivery_id", "text"),
    ("action_id", "text"),
    ("endpoint", "text"),
    ("state", "text"),
    ("priority", "int"),
    ("attempts", "int"),
    ("next_attempt_at", "timestamptz"),
)


def _insert_from_arrays(
    table: str, columns: Columns, tail: str, *, first: int = 1, where: str = ""
) -> str:
    """INSERT INTO table SELECT ... FROM unnest($first::type[], ...) AS u(columns) [where]."""
    names = ", ".join(c for c, _ in columns)
    arrays = ", ".join(
        f"${i}::{'text' if t == 'jsonb' else t}[]" for i, (_, t) in enumerate(columns, first)
    )
    selected = ", ".join(f"u.{c}::jsonb" if t == "jsonb" else f"u.{c}" for c, t in columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {selected}"  # noqa: S608 - our own names
        f" FROM unnest({arrays}) AS u({names}) {where} {tail}"
    )


# Actions, and the ledger entries and deliveries of those actually created (a redelivered
# trigger's action exists: it and its rows drop out), in one statement.
_CREATED = "WHERE u.action_id IN (SELECT action_id FROM created)"
_CREATE_PARTS = (
    _insert_from_arrays(
        "care_actions", _ACTION_COLUMNS, "ON CONFLICT DO NOTHING RETURNING action_id"
    ),
    _insert_from_arrays(
        "contact_ledger",
        _LEDGER_COLUMNS,
        "ON CONFLICT DO NOTHING",
        first=len(_ACTION_COLUMNS) + 1,
        where=_CREATED,
    ),
    _insert_from_arrays(
        "care_deliveries",
        _DELIVERY_COLUMNS,
        "ON CONFLICT DO NOTHING",
        first=len(_ACTION_COLUMNS) + len(_LEDGER_COLUMNS) + 1,
        where=_CREATED,
    ),
)
_CREATE_ACTIONS = "WITH created AS ({}), ledger AS ({}), deliveries AS ({}) {}".format(
    *_CREATE_PARTS, "SELECT action_id FROM created"
)
_INSERT_DELIVERIES = _insert_from_arrays(
    "care_deliveries", _DELIVERY_COLUMNS, "ON CONFLICT DO NOTHING"
)


def _columns(rows: Sequence[dict[str, Any]], columns: Columns) -> list[Any]:
    """Column arrays; a JSON column's None stays NULL (not JSON null)."""
    return [
        [None if r[c] is None else dumps(r[c]) for r in rows]
        if t == "jsonb"
        else [r[c] for r in rows]
        for c, t in columns
    ]


async def create_actions(
    conn: AsyncConnection,
    actions: Sequence[dict[str, Any]],
    ledger: Sequence[dict[str, Any]],
    deliveries: Sequence[dict[str, Any]],
) -> set[str]:
    """Insert actions and, for those that did not exist, their ledger entries and deliveries;
    return the ids created."""
    if not actions:
        return set()
    raw = await raw_connection(conn)
    result = await raw.fetch(
        _CREATE_ACTIONS,
        *_columns(actions, _ACTION_COLUMNS),
        *_columns(ledger, _LEDGER_COLUMNS),
        *_columns(deliveries, _DELIVERY_COLUMNS),
    )
    return {r[0] for r in result}


async def insert_deliveries(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        raw = await raw_connection(conn)
        await raw.execute(_INSERT_DELIVERIES, *_columns(rows, _DELIVERY_COLUMNS))


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
RAW_JSON_COLUMNS = ("explanation", "details", "trace_context")
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
    raw = await raw_connection(conn)
    rows = await raw.fetch(_CLAIM, endpoint, now, lease_until, limit)
    return [dict(r.items()) for r in rows]


_CLAIM = f"""
    WITH claimed AS (
      UPDATE care_deliveries AS d SET lease_until = $3, updated_at = $2
      WHERE d.delivery_id IN (
        SELECT delivery_id FROM care_deliveries
        WHERE endpoint = $1 AND state = 'pending' AND next_attempt_at <= $2
          AND (lease_until IS NULL OR lease_until < $2)
        ORDER BY priority, next_attempt_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED)
      RETURNING d.delivery_id, d.action_id, d.attempts
    )
    SELECT c.delivery_id, c.attempts, {_CLAIM_COLUMNS}
    FROM claimed AS c JOIN care_actions AS a ON a.action_id = c.action_id
    """  # noqa: S608 - column names from our own table definition

_RECORD_RESULTS = (
    "UPDATE care_deliveries AS d SET state = u.state, attempts = u.attempts,"
    " next_attempt_at = u.next_at, last_error = u.error, delivered_at = u.delivered_at,"
    " lease_until = NULL, updated_at = now()"
    " FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::text[],"
    " $6::timestamptz[]) AS u(delivery_id, state, attempts, next_at, error, delivered_at)"
    " WHERE d.delivery_id = u.delivery_id"
    # An action cancelled while its delivery was in flight stays cancelled.
    " AND d.state <> 'cancelled'"
)


async def record_results(conn: AsyncConnection, results: Sequence[dict[str, Any]]) -> None:
    """Write finished attempts: b_id, b_state, b_attempts, b_next, b_error, b_delivered_at."""
    if not results:
        return
    # One row per delivery (the last attempt written wins, as one UPDATE per result did).
    last = list({r["b_id"]: r for r in results}.values())
    raw = await raw_connection(conn)
    await raw.execute(
        _RECORD_RESULTS,
        *[[r[k] for r in last] for k in ("b_id", "b_state", "b_attempts", "b_next")],
        [r["b_error"] for r in last],
        [r["b_delivered_at"] for r in last],
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
