"""Snapshots of the label distribution in PostgreSQL (`distribution_snapshots`, migration 0012):
what GET /v1/stats/distribution/history answers from."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.adapters import queries
from tierflow_common.db.tables import distribution_snapshots as snapshots

Distribution = dict[str, dict[str, int]]


async def latest_at(conn: AsyncConnection) -> datetime | None:
    value: datetime | None = await conn.scalar(select(func.max(snapshots.c.at)))
    return value


async def take(
    conn: AsyncConnection, at: datetime, defaults: Mapping[str, str], keep: timedelta
) -> Distribution:
    """Count every dimension's labels now, store it as the snapshot at `at`, and drop the
    snapshots older than `keep`."""
    counts = await queries.distribution(conn, defaults)
    await conn.execute(
        pg_insert(snapshots)
        .values(at=at, dimensions=counts)
        .on_conflict_do_nothing(index_elements=["at"])
    )
    await conn.execute(delete(snapshots).where(snapshots.c.at < at - keep))
    return counts


async def between(
    conn: AsyncConnection, since: datetime, until: datetime, limit: int
) -> list[tuple[datetime, Distribution]]:
    """Snapshots taken in [since, until], oldest first (the last `limit` of them)."""
    newest = (
        select(snapshots.c.at, snapshots.c.dimensions)
        .where(snapshots.c.at >= since, snapshots.c.at <= until)
        .order_by(snapshots.c.at.desc())
        .limit(limit)
        .subquery()
    )
    rows = await conn.execute(select(newest).order_by(newest.c.at))
    return [(r.at, r.dimensions) for r in rows]
