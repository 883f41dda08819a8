"""Deliveries are leased most urgent first: an index in that order, so a claim reads the first
due rows instead of sorting an endpoint's whole backlog (tens of thousands after an outage).

Revision ID: 0006_notifier_claim
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_notifier_claim"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_care_deliveries_claim",
        "care_deliveries",
        ["endpoint", "priority", "next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_care_deliveries_claim", table_name="care_deliveries")
