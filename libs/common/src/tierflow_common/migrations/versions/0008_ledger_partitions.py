"""The dedup ledgers (`processed_events`, `ingest_receipts`) partitioned by week of event time,
so weeks past the retention window can be dropped (tierflow_common/db/ledger_partitions.py
creates and drops the weekly partitions at run time; none is created here).

The primary key becomes (source, event_id, event_time): a partitioned table's keys must hold
its partition key, and an event's time is the same on every resend. Rows written before this
migration have no event time. They keep their old key in a *legacy* partition covering every
time before the start of next week (so before the first weekly partition): their event_time
is '-infinity', and a unique index on (source, event_id) in that partition still catches a
resend of any of them (INSERT ... ON CONFLICT DO NOTHING honours it). The legacy partition is
dropped like a weekly one once its end leaves the window. Existing tables are not rewritten:
the new column has a constant default; ATTACH builds the new key's index on the old rows.

Revision ID: 0008_ledger_partitions
Revises: 0007_unread_partitions
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0008_ledger_partitions"
down_revision: str | None = "0007_unread_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> its columns besides (source, event_id) and event_time
_TABLES = {
    "processed_events": {
        "customer_id": "text NOT NULL",
        "processed_at": "timestamptz NOT NULL DEFAULT now()",
    },
    "ingest_receipts": {"received_at": "timestamptz NOT NULL DEFAULT now()"},
}
_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
_WEEK = timedelta(days=7)


def _next_week() -> str:
    now = datetime.now(UTC)
    start = _MONDAY + ((now - _MONDAY) // _WEEK + 1) * _WEEK
    return start.isoformat(sep=" ")


def upgrade() -> None:
    bind = op.get_bind()
    cutover = _next_week()
    for table, others in _TABLES.items():
        columns = ", ".join(f"{name} {sql}" for name, sql in others.items())
        legacy = f"{table}_legacy"
        exists = f"SELECT EXISTS (SELECT 1 FROM {table})"  # noqa: S608 - our own table names
        has_rows = bind.execute(sa.text(exists)).scalar()
        op.execute(f"ALTER TABLE {table} RENAME TO {legacy}")
        if has_rows:
            # A constant default: no rewrite. (source, event_id) stays unique in this partition.
            op.execute(
                f"ALTER TABLE {legacy} ADD COLUMN event_time timestamptz NOT NULL "
                "DEFAULT '-infinity'"
            )
            op.execute(f"ALTER TABLE {legacy} ALTER COLUMN event_time DROP DEFAULT")
            op.execute(
                f"CREATE UNIQUE INDEX {legacy}_source_event_id ON {legacy} (source, event_id)"
            )
            op.execute(f"ALTER TABLE {legacy} DROP CONSTRAINT {table}_pkey")
        else:
            op.execute(f"DROP TABLE {legacy}")
        op.execute(
            f"CREATE TABLE {table} (source text NOT NULL, event_id text NOT NULL, "
            f"event_time timestamptz NOT NULL, {columns}, "
            f"CONSTRAINT {table}_pkey PRIMARY KEY (source, event_id, event_time)) "
            "PARTITION BY RANGE (event_time)"
        )
        if has_rows:
            op.execute(
                f"ALTER TABLE {table} ATTACH PARTITION {legacy} "
                f"FOR VALUES FROM (MINVALUE) TO ('{cutover}')"
            )


def downgrade() -> None:
    for table, others in _TABLES.items():
        columns = ", ".join(f"{name} {sql}" for name, sql in others.items())
        names = ", ".join(["source", "event_id", *others])
        flat = f"{table}_flat"
        op.execute(f"CREATE TABLE {flat} (source text NOT NULL, event_id text NOT NULL, {columns})")
        # A key seen under several event times (resends with a changed time) is kept once.
        copy = (
            f"INSERT INTO {flat} ({names}) SELECT DISTINCT ON (source, event_id) {names} "  # noqa: S608 - our own names
            f"FROM {table} ORDER BY source, event_id, event_time"
        )
        op.execute(copy)
        op.execute(f"DROP TABLE {table}")  # and every partition
        # Weekly tables an interrupted drop left standalone.
        for (name,) in op.get_bind().execute(
            sa.text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
                "AND c.relname LIKE :pattern ESCAPE '!'"
            ),
            {"pattern": table.replace("_", "!_") + "!_w%"},
        ):
            op.execute(f'DROP TABLE "{name}"')
        op.execute(f"ALTER TABLE {flat} RENAME TO {table}")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (source, event_id)"
        )
