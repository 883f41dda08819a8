"""Population statistics (RFM quintiles, ABC cut points) and their quantile sketches.

Revision ID: 0004_population
Revises: 0003_classifier
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004_population"
down_revision: str | None = "0003_classifier"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "population_stats",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("recency", sa.LargeBinary, nullable=False),
        sa.Column("frequency", sa.LargeBinary, nullable=False),
        sa.Column("monetary", sa.LargeBinary, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )


def downgrade() -> None:
    op.drop_table("population_stats")
