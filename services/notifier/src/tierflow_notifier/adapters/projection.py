"""The notifier's own view of customers (labels, profile, consent, first purchase, complaints)
and its durable schedule table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Text, and_, any_, bindparam, delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.tables import notifier_complaints, notifier_contacts, notifier_schedules
from tierflow_notifier.domain.pressure import Reachability
from tierflow_notifier.domain.schedules import CustomerFacts, ScheduleEntry

_C = notifier_contacts
_S = notifier_schedules
_K = notifier_complaints


async def merge_labels(conn: AsyncConnection, labels: Mapping[str, Mapping[str, str]]) -> None:
    """Record each customer's latest label per dimension (cadences need the current one)."""
    if not labels:
        return
    stmt = insert(_C)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={"labels": _C.c.labels.op("||")(stmt.excluded.labels), "updated_at": func.now()},
        ),
        [{"customer_id": c, "labels": dict(v)} for c, v in sorted(labels.items())],
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


async def note_first_purchases(
    conn: AsyncConnection, earliest: Mapping[str, datetime]
) -> dict[str, datetime]:
    """Store each customer's earliest purchase; return those whose first purchase is new or
    earlier than known (their follow-up must be (re)scheduled)."""
    if not earliest:
        return {}
    ins = insert(_C).values(
        [{"customer_id": c, "first_purchase_at": t} for c, t in sorted(earliest.items())]
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["customer_id"],
        set_={"first_purchase_at": ins.excluded.first_purchase_at, "updated_at": func.now()},
        where=_C.c.first_purchase_at.is_(None)
        | (ins.excluded.first_purchase_at < _C.c.first_purchase_at),
    ).returning(_C.c.customer_id, _C.c.first_purchase_at)
    return {r.customer_id: r.first_purchase_at for r in await conn.execute(stmt)}


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


async def load_contacts(
    conn: AsyncConnection, customer_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    ids = sorted(set(customer_ids))
    if not ids:
        return {}
    rows = await conn.execute(
        select(_C).where(_C.c.customer_id == any_(bindparam(None, list(ids), type_=ARRAY(Text))))
    )
    return {r.customer_id: dict(r._mapping) for r in rows}


def reachability(row: Mapping[str, Any] | None) -> Reachability:
    if row is None:
        return Reachability()
    labels = row.get("labels") or {}
    return Reachability(
        timezone=row.get("timezone"),
        preferred_channel=row.get("preferred_channel"),
        marketing_consent=row.get("marketing_consent"),
        channel_consent=dict(row.get("channel_consent") or {}),
        tier=labels.get("value_tier"),
    )


def facts(
    row: Mapping[str, Any] | None, default_tz: str, resolved: frozenset[str] = frozenset()
) -> CustomerFacts:
    if row is None:
        return CustomerFacts(timezone=default_tz, resolved_complaints=resolved)
    birthday = row.get("birthday")
    return CustomerFacts(
        labels=dict(row.get("labels") or {}),
        birthday=birthday if isinstance(birthday, date) else None,
        timezone=row.get("timezone") or default_tz,
        resolved_complaints=resolved,
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


async def upsert_schedules(
    conn: AsyncConnection, entries: Sequence[ScheduleEntry], merge: Merge
) -> None:
    """Insert entries; on an existing entry keep it ("keep"), take the newer or earlier anchor,
    or replace it. Deterministic schedule ids make re-planning idempotent."""
    if not entries:
        return
    unique = {e.schedule_id: e for e in entries}
    stmt = insert(_S).values([asdict(e) for e in unique.values()])
    if merge == "keep":
        await conn.execute(stmt.on_conflict_do_nothing())
        return
    set_ = {k: stmt.excluded[k] for k in ("due_at", "anchor_at", "period", "ref")}
    where = None
    if merge == "newer":
        where = stmt.excluded.anchor_at > _S.c.anchor_at
    elif merge == "earlier":
        where = stmt.excluded.anchor_at < _S.c.anchor_at
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["schedule_id"], set_=set_, where=where)
    )


async def delete_schedules(conn: AsyncConnection, schedule_ids: Sequence[str]) -> None:
    if schedule_ids:
        await conn.execute(delete(_S).where(_S.c.schedule_id.in_(list(schedule_ids))))


async def end_cadences(conn: AsyncConnection, ended: Sequence[tuple[str, str, str]]) -> None:
    """Drop cadence entries (customer, rule, label) whose customer left the label."""
    if not ended:
        return
    await conn.execute(
        delete(_S).where(tuple_(_S.c.customer_id, _S.c.rule_id, _S.c.ref).in_(sorted(set(ended))))
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
