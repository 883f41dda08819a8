"""Deliveries leave room on their pages so a claim's lease is a HOT update.

A delivery row is written three times: inserted pending, leased by a claim (`lease_until`,
`updated_at`), finished by its result (`state`, ...). The lease touches no indexed column, so
PostgreSQL could update the row in place on its page (a heap-only tuple, no entry in any of the
table's five indexes), but only
where the page has room: at the default fill factor inserts pack every page full and each
claim wrote five index entries. A claim leases up to `NOTIFIER_DELIVERY_BATCH` rows in one
transaction, and the old versions stay on the page until it commits, so a page needs room for
a second copy of each of its rows: at 50, 97% of a claim's leases are in place (60: 65%; 45:
100%, tests/integration/test_delivery_leases.py), and the claims' database time in the
notifier bench fell from 2.9-3.8 s to 1.0-1.3 s per 60,000 deliveries (pg_stat_statements;
docs/benchmarks.md). The table takes about twice the pages; the retention job keeps it to the
deliveries of its window. Pages written before this migration keep their packing until
rewritten (VACUUM FULL); new rows get the room.

Revision ID: 0019_delivery_fillfactor
Revises: 0018_care_loop
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019_delivery_fillfactor"
down_revision: str | None = "0018_care_loop"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE care_deliveries SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE care_deliveries RESET (fillfactor)")
