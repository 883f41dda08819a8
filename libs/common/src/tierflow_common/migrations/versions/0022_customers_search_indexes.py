"""The search indexes of `customers` without long runs of one key: `purchases_lifetime` with the
customer id after it, `churn_probability` only where it is set.

Every event rewrites its customer's row and so inserts into every index of `customers`
(migration 0021). An index whose key most rows share — most customers have made one or two
purchases; P(churn) is NULL until a churn model is fitted — puts each insert on a page full of
that key, which B-tree deduplication rewrites each time the page fills. With the customer id
as a second column every entry is distinct, and the range searches of the console (they page
by customer id) read the index as before; a range condition on P(churn) never matches NULL,
so the index leaves those rows out.

Revision ID: 0022_customers_search_indexes
Revises: 0021_customers_unused_indexes (and needs 0012_console_classifier)
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022_customers_search_indexes"
down_revision: str | None = "0021_customers_unused_indexes"
branch_labels: str | Sequence[str] | None = None
# The console's indexes come on their own branch.
depends_on: str | Sequence[str] | None = "0012_console_classifier"


def upgrade() -> None:
    op.execute("DROP INDEX ix_customers_purchases")
    op.execute("CREATE INDEX ix_customers_purchases ON customers (purchases_lifetime, customer_id)")
    op.execute("DROP INDEX ix_customers_churn")
    op.execute(
        "CREATE INDEX ix_customers_churn ON customers (churn_probability) "
        "WHERE churn_probability IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_customers_churn")
    op.execute("CREATE INDEX ix_customers_churn ON customers (churn_probability)")
    op.execute("DROP INDEX ix_customers_purchases")
    op.execute("CREATE INDEX ix_customers_purchases ON customers (purchases_lifetime)")
