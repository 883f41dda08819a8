"""Fitted churn models (BG/NBD family + Gamma-Gamma), versioned.

Revision ID: 0005_churn
Revises: 0004_population
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005_churn"
down_revision: str | None = "0004_population"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "churn_models",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("summary", JSONB, nullable=False),
        sa.Column("is_current", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    # At most one current model.
    op.create_index(
        "ux_churn_models_current",
        "churn_models",
        ["is_current"],
        unique=True,
        postgresql_where=sa.text("is_current"),
    )


def downgrade() -> None:
    op.drop_table("churn_models")
