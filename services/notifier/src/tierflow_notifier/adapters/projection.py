"""The notifier's own view of customers (labels, profile, consent, first purchase, complaints)
and its durable schedule table.

The statements a consumer batch runs (labels, first purchases, schedules, contacts) go straight
through asyncpg with one array parameter per column: the same text every batch, prepared once per
connection, no SQL compilation or per-row bind parameters (SQLAlchemy's multi-row VALUES was
compiled anew for every batch). They run inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import and_, delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.raw import raw_connection
from tierflow_common.db.tables import notifier_complaints, notifier_contacts, notifier_schedules
from tierflow_notifier.domain.playbooks import FirstPurchaseTrigger, Rule
from tierflow_notifier.domain.pressure import Reachability
from tierflow_notifier.domain.schedules import CustomerFacts, ScheduleEntry, schedule_id

_C = notifier_contacts
_S = notifier_schedules
_K = notifier_complaints
# The dimension whose label is "the customer's tier" (coupon values, action details).
TIER_DIMENSION = "value_tier"

_MERGE_LABELS = (
    "INSERT INTO notifier_contacts (customer_id, labels)"
    " SELECT u.c, u.l::jsonb FROM unnest($1::text[], $2::text[]) AS u(c, l)"
    " ON CONFLICT (customer_id) DO UPDATE"
    " SET labels = notifier_contacts.labels || EXCLUDED.labels, updated_at = now()"
)


async def merge_labels(conn: AsyncConnection, labels: Mapping[str, Mapping[str, str]]) -> None:
    """Record each customer's latest label per dimension (cadences need the current one)."""
    if not labels:
        return
    ordered = sorted(labels.items())  # the same lock order in every process
    raw = await raw_connection(conn)
    await raw.execute(
        _MERGE_LABELS,
        [c for c, _ in ordered],
        [orjson.dumps(dict(v)).decode() for _, v in ordered],
    )


async def patch_profile(conn: AsyncConnection, customer_id: str, patch: Mapping[str, Any]) -> None:
    """Apply a profile patch (only the fields given change; channel consent merges)."""
    values = {"customer_id": customer_id, **patch}
    stmt = insert(_C).values(values)
    set_: dict[str, Any] = {k: stmt.excluded[k] for k in patch if k != "channel_consent"}
    if "channel_consent" in patch:
        set_["channel_consent"] = _C.c.channel_consent.op("||")(stmt.excluded.channel_consent)
    set_["updated_at"] = func.now()
    await conn.execute(stmt.on_conflict_do_update(index_elements=["customer_id"], set_=set_))


_NOTE_FIRST_PURCHASES = """
WITH noted AS (
  INSERT INTO notifier_contacts AS c (customer_id, first_purchase_at)
  SELECT * FROM unnest($1::text[], $2::timestamptz[])
  ON CONFLICT (customer_id) DO UPDATE
  SET first_purchase_at = EXCLUDED.first_purchase_at, updated_at = now()
  WHERE c.first_purchase_at IS NULL OR EXCLUDED.first_purchase_at < c.first_purchase_at
  RETURNING c.customer_id, c.first_purchase_at
), scheduled AS (
  INSERT INTO notifier_schedules AS s
    (schedule_id, rule_id, customer_id, due_at, anchor_at, period, ref)
  SELECT f.schedule_id, f.rule_id, n.customer_id,
         n.first_purchase_at + f.after_us * interval '1 microsecond', n.first_purchase_at, 1, NULL
  FROM noted AS n
  JOIN unnest($3::text[], $4::text[], $5::text[], $6::bigint[])
    AS f(customer_id, schedule_id, rule_id, after_us) ON f.customer_id = n.customer_id
  ON CONFLICT (schedule_id) DO UPDATE SET due_at = EXCLUDED.due_at,
    anchor_at = EXCLUDED.anchor_at, period = EXCLUDED.period, ref = EXCLUDED.ref
  WHERE EXCLUDED.anchor_at < s.anchor_at
)
SELECT customer_id, first_purchase_at FROM noted
"""
_MICROSECOND = timedelta(microseconds=1)


async def note_first_purchases(
    conn: AsyncConnection,
    earliest: Mapping[str, datetime],
    follow_ups: Sequence[Rule] = (),
) -> dict[str, datetime]:
    """Store each customer's earliest purchase; return those whose first purchase is new or
    earlier than known. Their `follow_ups` (first-purchase rules) are (re)scheduled from it in
    the same statement: the entries `first_purchase_entry` makes, merged "earlier"."""
    if not earliest:
        return {}
    ordered = sorted(earliest.items())
    customers: list[str] = []
    schedule_ids: list[str] = []
    rule_ids: list[str] = []
    afters: list[int] = []
    for rule in follow_ups:
        trigger = rule.trigger
        assert isinstance(trigger, FirstPurchaseTrigger)
        after = trigger.after // _MICROSECOND
        for customer, _ in ordered:
            customers.append(customer)
            schedule_ids.append(schedule_id("first_purchase", customer, rule.id))
            rule_ids.append(rule.id)
            afters.append(after)
    raw = await raw_connection(conn)
    rows = await raw.fetch(
        _NOTE_FIRST_PURCHASES,
        [c for c, _ in ordered],
        [t for _, t in ordered],
        customers,
        schedule_ids,
        rule_ids,
        afters,
    )
    return {r["customer_id"]: r["first_purchase_at"] for r in rows}


async def open_complaint(
    conn: AsyncConnection, customer_id: str, complaint_id: str, opened_at: datetime
) -> bool:
    """Record a complaint; True if it is newly open (not seen before, not already resolved)."""
    ins = insert(_K).values(customer_id=customer_id, complaint_id=complaint_id, opened_at=opened_at)
    stmt = ins.on_conflict_do_update(
        index_elements=["customer_id", "complaint_id"],
        set_={"opened_at": ins.excluded.opened_at},
        where=_K.c.opened_at.is_(None),
    ).returning(_K.c.resolved_at)
    row = (await conn.execute(stmt)).first()
    return row is not None and row.resolved_at is None


async def resolve_complaint(
    conn: AsyncConnection, customer_id: str, complaint_id: str, resolved_at: datetime
) -> None:
    stmt = insert(_K).values(
        customer_id=customer_id, complaint_id=complaint_id, resolved_at=resolved_at
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["customer_id", "complaint_id"],
            set_={"resolved_at": func.coalesce(_K.c.resolved_at, stmt.excluded.resolved_at)},
        )
    )
    # Pending escalations of this complaint are moot now.
    await conn.execute(delete(_S).where(_S.c.customer_id == customer_id, _S.c.ref == complaint_id))


_CONTACT_COLUMNS = [c.name for c in _C.c]
_JSON_COLUMNS = frozenset(c.name for c in _C.c if c.name in ("labels", "channel_consent"))
_SELECTED = ", ".join(f"{c}::text AS {c}" if c in _JSON_COLUMNS else c for c in _CONTACT_COLUMNS)
# Column names from our own table definition.
_LOAD_CONTACTS = f"SELECT {_SELECTED} FROM notifier_contacts WHERE customer_id = ANY($1::text[])"  # noqa: S608


async def load_contacts(
    conn: AsyncConnection, customer_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Every column of the customers' contact rows (JSON columns decoded), by customer id."""
    ids = sorted(set(customer_ids))
    if not ids:
        return {}
    raw = await raw_connection(conn)
    out: dict[str, dict[str, Any]] = {}
    for r in await raw.fetch(_LOAD_CONTACTS, ids):
        row = dict(r.items())
        for name in _JSON_COLUMNS:
            row[name] = orjson.loads(row[name])
        out[row["customer_id"]] = row
    return out


def reachability(row: Mapping[str, Any] | None) -> Reachability:
    if row is None:
        return Reachability()
    labels = row.get("labels") or {}
    return Reachability(
        timezone=row.get("timezone"),
        preferred_channel=row.get("preferred_channel"),
        marketing_consent=row.get("marketing_consent"),
        channel_consent=dict(row.get("channel_consent") or {}),
        tier=labels.get(TIER_DIMENSION),
    )


def facts(
    row: Mapping[str, Any] | None,
    default_tz: str,
    resolved: frozenset[str] = frozenset(),
    generation: str | None = None,
) -> CustomerFacts:
    if row is None:
        return CustomerFacts(
            timezone=default_tz, resolved_complaints=resolved, generation=generation
        )
    birthday = row.get("birthday")
    return CustomerFacts(
        labels=dict(row.get("labels") or {}),
        birthday=birthday if isinstance(birthday, date) else None,
        timezone=row.get("timezone") or default_tz,
        resolved_complaints=resolved,
        generation=generation,
    )


async def resolved_complaints(
    conn: AsyncConnection, pairs: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    if not pairs:
        return set()
    rows = await conn.execute(
        select(_K.c.customer_id, _K.c.complaint_id).where(
            tuple_(_K.c.customer_id, _K.c.complaint_id).in_(sorted(set(pairs))),
            _K.c.resolved_at.is_not(None),
        )
    )
    return {(r.customer_id, r.complaint_id) for r in rows}


Merge = Literal["newer", "earlier", "replace", "keep"]


_SCHEDULE_TYPES = ("text", "text", "text", "timestamptz", "timestamptz", "int", "text")


def _insert_schedules(first: int) -> str:
    """Insert schedule entries from arrays $first.. (in `_schedule_columns` order)."""
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_SCHEDULE_TYPES, first))
    columns = "schedule_id, rule_id, customer_id, due_at, anchor_at, period, ref"
    # Placeholders and our own names only.
    return f"INSERT INTO notifier_schedules AS s ({columns}) SELECT * FROM unnest({arrays})"  # noqa: S608


_INSERT_SCHEDULES = _insert_schedules(1)
_REPLACE = (
    " ON CONFLICT (schedule_id) DO UPDATE SET due_at = EXCLUDED.due_at,"
    " anchor_at = EXCLUDED.anchor_at, period = EXCLUDED.period, ref = EXCLUDED.ref"
)
_UPSERT_SCHEDULES: Mapping[Merge, str] = {
    "keep": _INSERT_SCHEDULES + " ON CONFLICT DO NOTHING",
    "replace": _INSERT_SCHEDULES + _REPLACE,
    "newer": _INSERT_SCHEDULES + _REPLACE + " WHERE EXCLUDED.anchor_at > s.anchor_at",
    "earlier": _INSERT_SCHEDULES + _REPLACE + " WHERE EXCLUDED.anchor_at < s.anchor_at",
}


async def upsert_schedules(
    conn: AsyncConnection, entries: Sequence[ScheduleEntry], merge: Merge
) -> None:
    """Insert entries; on an existing entry keep it ("keep"), take the newer or earlier anchor,
    or replace it. Deterministic schedule ids make re-planning idempotent."""
    if not entries:
        return
    unique = list({e.schedule_id: e for e in entries}.values())
    raw = await raw_connection(conn)
    await raw.execute(_UPSERT_SCHEDULES[merge], *_schedule_columns(unique))


_PROJECT_CHANGES = f"""
WITH labelled AS ({_MERGE_LABELS}),
ended AS (
  DELETE FROM notifier_schedules AS s USING unnest($3::text[], $4::text[], $5::text[])
    AS u(customer_id, rule_id, ref)
  WHERE s.customer_id = u.customer_id AND s.rule_id = u.rule_id AND s.ref = u.ref
),
entered AS ({_insert_schedules(6)}{_REPLACE} WHERE EXCLUDED.anchor_at > s.anchor_at)
SELECT 1
"""  # noqa: S608 - our own statements


async def project_changes(
    conn: AsyncConnection,
    labels: Mapping[str, Mapping[str, str]],
    ended: Sequence[tuple[str, str, str]],
    entered: Sequence[ScheduleEntry],
) -> None:
    """In one statement: `merge_labels(labels)`, `end_cadences(ended)` and
    `upsert_schedules(entered, "newer")` (a customer's cadence is entered or ended, not both)."""
    if not (labels or ended or entered):
        return
    ordered = sorted(labels.items())
    gone = sorted(set(ended))
    unique = list({e.schedule_id: e for e in entered}.values())
    raw = await raw_connection(conn)
    await raw.execute(
        _PROJECT_CHANGES,
        [c for c, _ in ordered],
        [orjson.dumps(dict(v)).decode() for _, v in ordered],
        [g[0] for g in gone],
        [g[1] for g in gone],
        [g[2] for g in gone],
        *_schedule_columns(unique),
    )


def _schedule_columns(entries: Sequence[ScheduleEntry]) -> list[list[Any]]:
    return [
        [e.schedule_id for e in entries],
        [e.rule_id for e in entries],
        [e.customer_id for e in entries],
        [e.due_at for e in entries],
        [e.anchor_at for e in entries],
        [e.period for e in entries],
        [e.ref for e in entries],
    ]


async def delete_schedules(conn: AsyncConnection, schedule_ids: Sequence[str]) -> None:
    if schedule_ids:
        raw = await raw_connection(conn)
        await raw.execute(
            "DELETE FROM notifier_schedules WHERE schedule_id = ANY($1::text[])",
            list(schedule_ids),
        )


_END_CADENCES = (
    "DELETE FROM notifier_schedules AS s USING unnest($1::text[], $2::text[], $3::text[])"
    " AS u(customer_id, rule_id, ref)"
    " WHERE s.customer_id = u.customer_id AND s.rule_id = u.rule_id AND s.ref = u.ref"
)


async def end_cadences(conn: AsyncConnection, ended: Sequence[tuple[str, str, str]]) -> None:
    """Drop cadence entries (customer, rule, label) whose customer left the label."""
    if not ended:
        return
    rows = sorted(set(ended))
    raw = await raw_connection(conn)
    await raw.execute(
        _END_CADENCES, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    )


async def claim_due(conn: AsyncConnection, now: datetime, limit: int) -> list[ScheduleEntry]:
    rows = await conn.execute(
        select(
            _S.c.schedule_id,
            _S.c.rule_id,
            _S.c.customer_id,
            _S.c.due_at,
            _S.c.anchor_at,
            _S.c.period,
            _S.c.ref,
        )
        .where(_S.c.due_at <= now)
        .order_by(_S.c.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [ScheduleEntry(**r._mapping) for r in rows]


async def next_due(conn: AsyncConnection) -> datetime | None:
    value = await conn.scalar(select(func.min(_S.c.due_at)))
    return value if isinstance(value, datetime) else None


async def customers_with_birthday(
    conn: AsyncConnection, customer_ids: Iterable[str]
) -> list[dict[str, Any]]:
    ids = sorted(set(customer_ids))
    if not ids:
        return []
    rows = await conn.execute(
        select(_C).where(and_(_C.c.customer_id.in_(ids), _C.c.birthday.is_not(None)))
    )
    return [dict(r._mapping) for r in rows]
