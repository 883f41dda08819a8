"""Drop the two indexes of `customers` that no query reads.

Every event rewrites its customer's row, and no update of it is a heap-only tuple (the columns
it changes are indexed), so each write adds an entry to every index of the table. Two of the
eight are read by nothing: `value_tier` (segments and distributions read `customer_labels`,
the console's search filters by label through it too) and `rule_set_version` (the rule-set
sweep walks the primary key and compares versions in Python, `versions_after`; a
`version != …` condition cannot use an index anyway). Dropping them takes two of the eight
index insertions off every event.

Revision ID: 0021_customers_unused_indexes
Revises: 0020_change_records
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021_customers_unused_indexes"
down_revision: str | None = "0020_change_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_customers_value_tier")
    op.execute("DROP INDEX IF EXISTS ix_customers_rule_set_version")


def downgrade() -> None:
    op.execute("CREATE INDEX ix_customers_value_tier ON customers (value_tier)")
    op.execute("CREATE INDEX ix_customers_rule_set_version ON customers (rule_set_version)")
