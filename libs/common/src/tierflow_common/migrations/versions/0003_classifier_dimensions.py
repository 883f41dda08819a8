"""Classifier dimensions: review deadlines, labels by dimension, event-time watermark.

Revision ID: 0003_classifier
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0003_classifier"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = ("classifier",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("first_seen_at", sa.DateTime(timezone=True)))
    op.add_column(
        "customers",
        sa.Column(
            "recent_purchases",
            ARRAY(sa.DateTime(timezone=True)),
            nullable=False,
            server_default="{}",
        ),
    )
    op.add_column("customers", sa.Column("next_review_at", sa.DateTime(timezone=True)))
    op.add_column(
        "customers", sa.Column("rule_set_version", sa.Text, nullable=False, server_default="")
    )
    # The durable scheduler's queue: customers whose classes change with time alone.
    op.create_index(
        "ix_customers_next_review_at",
        "customers",
        ["next_review_at"],
        postgresql_where=sa.text("next_review_at IS NOT NULL"),
    )
    op.create_index("ix_customers_rule_set_version", "customers", ["rule_set_version"])
    op.create_table(
        "customer_labels",
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("dimension", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "dimension"),
    )
    op.create_index(
        "ix_customer_labels_segment", "customer_labels", ["dimension", "label", "customer_id"]
    )
    op.create_table(
        "classifier_clock",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("classifier_clock")
    op.drop_table("customer_labels")
    op.drop_index("ix_customers_rule_set_version", "customers")
    op.drop_index("ix_customers_next_review_at", "customers")
    for column in ("rule_set_version", "next_review_at", "recent_purchases", "first_seen_at"):
        op.drop_column("customers", column)
