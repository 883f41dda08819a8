"""A replay's watermark must wait for every partition, including those not read yet: an
assigned partition is registered with no watermark until its first event is applied (or it is
found empty), and the watermark is unknown while any such row exists.

Revision ID: 0007_unread_partitions
Revises: 0005_churn
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_unread_partitions"
down_revision: str | None = "0005_churn"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "classifier_clock", "watermark", existing_type=sa.DateTime(timezone=True), nullable=True
    )


def downgrade() -> None:
    op.execute("DELETE FROM classifier_clock WHERE watermark IS NULL")
    op.alter_column(
        "classifier_clock", "watermark", existing_type=sa.DateTime(timezone=True), nullable=False
    )
