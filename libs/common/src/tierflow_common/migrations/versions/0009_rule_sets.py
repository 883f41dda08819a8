"""Rule sets as versioned data: `rule_sets` holds every version (its id derived from its
normalised content), `rule_set_activations` every activation, the latest one in force. The
classifier seeds both from its rule-set file when they are empty.

Revision ID: 0009_rule_sets
Revises: 0008_ledger_partitions
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009_rule_sets"
down_revision: str | None = "0008_ledger_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rule_sets",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("content", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint("status IN ('active', 'retired', 'draft')", name="rule_sets_status"),
    )
    op.create_table(
        "rule_set_activations",
        sa.Column("activation", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Text, sa.ForeignKey("rule_sets.version"), nullable=False),
        sa.Column("previous", sa.Text, sa.ForeignKey("rule_sets.version"), nullable=True),
        sa.Column("rollout_percent", sa.Numeric, nullable=False),
        sa.Column(
            "activated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("activated_by", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint(
            "rollout_percent > 0 AND rollout_percent <= 100", name="rule_set_rollout_percent"
        ),
    )


def downgrade() -> None:
    op.drop_table("rule_set_activations")
    op.drop_table("rule_sets")
