"""The care loop: the notifier keeps each customer's latest known scores (churn probability,
CLV, value at risk, from the last classification change that carried them) beside its contact
row, so scheduled actions (cadence, follow-up, SLA, holiday, survey) carry them too and rank
in the queue like change-triggered ones.

Revision ID: 0018_care_loop
Revises: 0017_offset_fencing
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018_care_loop"
down_revision: str | None = "0017_offset_fencing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE notifier_contacts"
        " ADD COLUMN churn_probability double precision,"
        " ADD COLUMN clv double precision,"
        " ADD COLUMN value_at_risk double precision,"
        " ADD COLUMN scores_at timestamptz"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE notifier_contacts DROP COLUMN scores_at, DROP COLUMN value_at_risk,"
        " DROP COLUMN clv, DROP COLUMN churn_probability"
    )
