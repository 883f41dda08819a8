"""Console support in the classifier: periodic snapshots of the label distribution, each
customer's churn probability as of its last classification, and indexes for searching
customers by lifetime spend, lifetime purchases, last purchase time and churn probability.

The search orders by customer id (the primary key) and pages by it; these indexes let a
selective range filter start from its own rows instead of walking every customer.

Revision ID: 0012_console_classifier
Revises: 0011_erasure_retention
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_console_classifier"
down_revision: str | None = "0011_erasure_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE distribution_snapshots (at timestamptz NOT NULL, "
        "dimensions jsonb NOT NULL, CONSTRAINT distribution_snapshots_pkey PRIMARY KEY (at))"
    )
    op.execute("CREATE INDEX ix_customers_net_spend ON customers (net_spend_lifetime)")
    op.execute("CREATE INDEX ix_customers_purchases ON customers (purchases_lifetime)")
    op.execute("CREATE INDEX ix_customers_last_purchase ON customers (last_purchase_at)")
    # P(churn) as of each customer's last classification (the classifier writes it).
    op.execute("ALTER TABLE customers ADD COLUMN churn_probability double precision")
    op.execute("CREATE INDEX ix_customers_churn ON customers (churn_probability)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_customers_churn")
    op.execute("ALTER TABLE customers DROP COLUMN churn_probability")
    op.execute("DROP INDEX ix_customers_last_purchase")
    op.execute("DROP INDEX ix_customers_purchases")
    op.execute("DROP INDEX ix_customers_net_spend")
    op.execute("DROP TABLE distribution_snapshots")
