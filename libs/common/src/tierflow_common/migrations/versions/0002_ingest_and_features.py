"""Ingest API keys and receipts; refund totals, features and profile on customers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("sources", ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "ingest_receipts",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.PrimaryKeyConstraint("source", "event_id"),
    )
    op.add_column(
        "customers",
        sa.Column("refunds_lifetime", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column(
        "customers",
        sa.Column("refunded_lifetime", sa.Numeric(30, 6), nullable=False, server_default="0"),
    )
    op.add_column(
        "customers",
        sa.Column("features", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.add_column(
        "customers",
        sa.Column("profile", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )


def downgrade() -> None:
    for column in ("profile", "features", "refunded_lifetime", "refunds_lifetime"):
        op.drop_column("customers", column)
    op.drop_table("ingest_receipts")
    op.drop_table("api_keys")
