"""Read-side queries for the API: history, labels as of a date, segments, distributions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.domain.rules import NO_RULE_MATCHED
from tierflow_common.db.tables import classification_changes as changes
from tierflow_common.db.tables import customer_labels, customers


def _change(row: Any) -> dict[str, Any]:
    return {
        "change_id": row.change_id,
        "dimension": row.dimension,
        "from": row.from_label,
        "to": row.to_label,
        "reason": row.reason,
        "explanation": row.explanation,
        "cause": row.cause,
        "effective_at": row.effective_at,
        "rule_set_version": row.rule_set_version,
    }


async def history(
    conn: AsyncConnection,
    customer_id: str,
    *,
    dimension: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[dict[str, Any]]:
    query = select(changes).where(changes.c.customer_id == customer_id)
    if dimension is not None:
        query = query.where(changes.c.dimension == dimension)
    if since is not None:
        query = query.where(changes.c.effective_at >= since)
    if until is not None:
        query = query.where(changes.c.effective_at <= until)
    if after is not None:
        query = query.where(
            (changes.c.effective_at, changes.c.change_id) > (after[0], after[1])  # type: ignore[operator]
        )
    rows = await conn.execute(
        query.order_by(changes.c.effective_at, changes.c.change_id).limit(limit)
    )
    return [_change(r) for r in rows]


async def labels_as_of(
    conn: AsyncConnection,
    customer_id: str,
    at: datetime,
    defaults: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The last change of each dimension effective at or before `at`.

    A first assignment of a dimension's default label is not stored as a change (it says only
    "nothing known yet"); it happened with the customer's first value-tier change, so a
    dimension of `defaults` (dimension -> default label) without a change by `at` gets a
    synthetic entry (empty change_id) carrying that first change's cause, time and version.
    """
    ranked = (
        select(
            changes,
            func.row_number()
            .over(
                partition_by=changes.c.dimension,
                order_by=(changes.c.effective_at.desc(), changes.c.recorded_at.desc()),
            )
            .label("n"),
        )
        .where(changes.c.customer_id == customer_id, changes.c.effective_at <= at)
        .subquery()
    )
    rows = await conn.execute(select(ranked).where(ranked.c.n == 1))
    found = {r.dimension: _change(r) for r in rows}
    missing = [d for d in (defaults or {}) if d not in found]
    if not found or not missing or defaults is None:
        return found
    first = (
        await conn.execute(
            select(changes)
            .where(changes.c.customer_id == customer_id, changes.c.dimension == "value_tier")
            .order_by(changes.c.effective_at, changes.c.recorded_at)
            .limit(1)
        )
    ).first()
    if first is None:
        return found
    for dimension in missing:
        found[dimension] = {
            "change_id": "",
            "dimension": dimension,
            "from": None,
            "to": defaults[dimension],
            "reason": NO_RULE_MATCHED,
            "explanation": {},
            "cause": first.cause,
            "effective_at": first.effective_at,
            "rule_set_version": first.rule_set_version,
        }
    return found


async def segment(
    conn: AsyncConnection,
    dimension: str,
    label: str,
    *,
    limit: int,
    after: str | None,
    default: str | None = None,
) -> list[dict[str, Any]]:
    """Members of a label. A customer still at its first, default label has no
    `customer_labels` row (that assignment is not a change), so the default label's members
    are the customers without a row or with a row holding the default."""
    if label == default:
        joined = customers.outerjoin(
            customer_labels,
            (customer_labels.c.customer_id == customers.c.customer_id)
            & (customer_labels.c.dimension == dimension),
        )
        since = func.coalesce(
            customer_labels.c.since,
            cast(customers.c.dimensions[dimension]["since"].astext, DateTime(timezone=True)),
        )
        query = (
            select(customers.c.customer_id, since.label("since"))
            .select_from(joined)
            .where(customer_labels.c.label.is_(None) | (customer_labels.c.label == label))
        )
        if after is not None:
            query = query.where(customers.c.customer_id > after)
        rows = await conn.execute(query.order_by(customers.c.customer_id).limit(limit))
        return [{"customer_id": r.customer_id, "since": r.since} for r in rows]
    query = select(customer_labels.c.customer_id, customer_labels.c.since).where(
        customer_labels.c.dimension == dimension, customer_labels.c.label == label
    )
    if after is not None:
        query = query.where(customer_labels.c.customer_id > after)
    rows = await conn.execute(query.order_by(customer_labels.c.customer_id).limit(limit))
    return [{"customer_id": r.customer_id, "since": r.since} for r in rows]


async def distribution(
    conn: AsyncConnection, defaults: Mapping[str, str] | None = None
) -> dict[str, dict[str, int]]:
    """Customers per label per dimension. The default label of each dimension of `defaults`
    counts every customer not holding another label (first default assignments have no
    `customer_labels` row)."""
    rows = await conn.execute(
        select(customer_labels.c.dimension, customer_labels.c.label, func.count())
        .group_by(customer_labels.c.dimension, customer_labels.c.label)
        .order_by(customer_labels.c.dimension, customer_labels.c.label)
    )
    out: dict[str, dict[str, int]] = {}
    for dimension, label, count in rows:
        out.setdefault(dimension, {})[label] = int(count)
    if defaults:
        total = int(await conn.scalar(select(func.count()).select_from(customers)) or 0)
        for dimension, default in defaults.items():
            counts = out.setdefault(dimension, {})
            others = sum(n for label, n in counts.items() if label != default)
            if total - others > 0:
                counts[default] = total - others
            else:
                counts.pop(default, None)
            out[dimension] = dict(sorted(counts.items()))
    return dict(sorted(out.items()))
