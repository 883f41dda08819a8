"""The customer search in PostgreSQL: a filter (domain/customer_filter.py) as one WHERE clause
over `customers`, paged by customer id (the primary key), and rows with criteria and labels.

Labels are read from `customer_labels` (indexed by dimension, label, customer): a customer
still at a dimension's first, default label has no row there (that assignment is not a
change), so "holds the default" is "has no row of another label". Range filters use the
customers' indexes on spend, purchases, last purchase and churn probability (migration 0012).
The churn probability filtered on and shown is the one of the customer's last classification
(the classifier re-scores a customer whenever its risk crosses a threshold the rules compare
it with, and at least every `churn_review_days` otherwise); the CLV is scored for each row
shown, with the churn model in force.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.adapters.repository import load_states
from tierflow_classifier.domain.churn import FittedModel
from tierflow_classifier.domain.churn.score import ChurnConfig
from tierflow_classifier.domain.churn_features import full_score
from tierflow_classifier.domain.customer_filter import CustomerFilter
from tierflow_classifier.domain.model import CustomerState
from tierflow_common.db.tables import customer_labels, customers

EXPORT_PAGE = 1_000  # customers read per query of an export


@dataclass(frozen=True)
class Scoring:
    """The churn model in force, its configuration and the clock's now (None: no model)."""

    model: FittedModel | None
    config: ChurnConfig
    now: datetime | None

    def clv(self, state: CustomerState) -> float | None:
        """The customer's expected value over the CLV horizon (None where not scored)."""
        if self.model is None or self.now is None or state.churn_probability is None:
            return None
        found = full_score(state, self.now, self.model, self.config)
        return None if found is None else found.clv


@dataclass(frozen=True)
class CustomerRow:
    """A matching customer and its CLV, scored for the row."""

    state: CustomerState
    clv: float | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def conditions(f: CustomerFilter, defaults: Mapping[str, str]) -> list[ColumnElement[bool]]:
    """The SQL part of the filter (everything but the churn bounds)."""
    c = customers.c
    where: list[ColumnElement[bool]] = []
    if f.prefix:
        where.append(c.customer_id.like(_escape_like(f.prefix) + "%", escape="\\"))
    for dimension, labels in f.labels.items():
        held = customer_labels.c
        if defaults.get(dimension) in labels:
            # The default label: no row, or a row with one of the labels asked for.
            other = exists().where(
                held.customer_id == c.customer_id,
                held.dimension == dimension,
                held.label.not_in(sorted(labels)),
            )
            where.append(~other)
        else:
            where.append(
                c.customer_id.in_(
                    select(held.customer_id).where(
                        held.dimension == dimension, held.label.in_(sorted(labels))
                    )
                )
            )
    if f.spend_min is not None:
        where.append(c.net_spend_lifetime >= f.spend_min)
    if f.spend_max is not None:
        where.append(c.net_spend_lifetime <= f.spend_max)
    if f.orders_min is not None:
        where.append(c.purchases_lifetime >= f.orders_min)
    if f.orders_max is not None:
        where.append(c.purchases_lifetime <= f.orders_max)
    if f.last_purchase_from is not None:
        where.append(c.last_purchase_at >= f.last_purchase_from)
    if f.last_purchase_before is not None:
        where.append(c.last_purchase_at < f.last_purchase_before)
    if f.churn_min is not None:
        where.append(c.churn_probability >= f.churn_min)
    if f.churn_max is not None:
        where.append(c.churn_probability <= f.churn_max)
    return where


async def _candidate_ids(
    conn: AsyncConnection, where: Sequence[ColumnElement[bool]], after: str | None, limit: int
) -> list[str]:
    query = select(customers.c.customer_id).where(and_(True, *where))
    if after is not None:
        query = query.where(customers.c.customer_id > after)
    rows = await conn.execute(query.order_by(customers.c.customer_id).limit(limit))
    return [r.customer_id for r in rows]


async def _rows(conn: AsyncConnection, ids: Sequence[str], scoring: Scoring) -> list[CustomerRow]:
    states = await load_states(conn, ids)
    return _scored_states([states[cid] for cid in ids if cid in states], scoring)


async def walk(
    conn: AsyncConnection,
    f: CustomerFilter,
    defaults: Mapping[str, str],
    scoring: Scoring,
    *,
    page: int = EXPORT_PAGE,
) -> AsyncIterator[list[CustomerRow]]:
    """Every matching customer, in id order, `page` at a time: one query of their ids read
    through a server-side cursor (one pass over the customers, whatever the count)."""
    query = (
        select(customers.c.customer_id)
        .where(and_(True, *conditions(f, defaults)))
        .order_by(customers.c.customer_id)
        .execution_options(yield_per=page)
    )
    result = await conn.stream(query)
    async for rows in result.partitions():
        # The states through the consumer's own load (JSON decoded by orjson), on the same
        # connection between two reads of the cursor.
        states = await load_states(conn, [r.customer_id for r in rows])
        ordered = [states[r.customer_id] for r in rows if r.customer_id in states]
        # Scored in a worker thread, so the consumer keeps its turns during a long export.
        yield await asyncio.to_thread(_scored_states, ordered, scoring)


def _scored_states(states: Sequence[CustomerState], scoring: Scoring) -> list[CustomerRow]:
    return [CustomerRow(s, scoring.clv(s)) for s in states]


async def search(
    conn: AsyncConnection,
    f: CustomerFilter,
    defaults: Mapping[str, str],
    scoring: Scoring,
    *,
    after: str | None,
    limit: int,
) -> tuple[list[CustomerRow], bool]:
    """Up to `limit` matching customers after `after`, and whether more follow."""
    ids = await _candidate_ids(conn, conditions(f, defaults), after, limit + 1)
    return await _rows(conn, ids[:limit], scoring), len(ids) > limit


async def count(conn: AsyncConnection, f: CustomerFilter, defaults: Mapping[str, str]) -> int:
    """How many customers match."""
    query = select(func.count()).select_from(customers).where(and_(True, *conditions(f, defaults)))
    return int(await conn.scalar(query) or 0)


def labels_of(state: CustomerState, defaults: Mapping[str, str]) -> dict[str, str]:
    """The customer's label per dimension of the rule set in force (its default where none)."""
    return {
        name: (a.label if (a := state.dimensions.get(name)) is not None else default)
        for name, default in defaults.items()
    }


def decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f") if value != 0 else "0"


def criteria(row: CustomerRow) -> dict[str, Any]:
    """The row's criteria, as the API's JSON has them."""
    s = row.state
    f = s.features
    return {
        "net_spend_lifetime": decimal_text(s.net_spend_lifetime),
        "purchases_lifetime": s.purchases_lifetime,
        "last_purchase_at": s.last_purchase_at,
        "first_purchase_at": s.first_purchase_at,
        "open_complaints": f.open_complaints,
        "satisfaction_latest": f.satisfaction_latest,
        "churn_probability": s.churn_probability,
        "clv": row.clv,
    }


async def customer_exists(conn: AsyncConnection, customer_id: str) -> bool:
    found = await conn.scalar(
        select(customers.c.customer_id).where(customers.c.customer_id == customer_id)
    )
    return found is not None
