"""The care-action queue: the scores an action was planned with, reassignment and cancellation,
and the queue order as stored columns with one index, so `GET /v1/actions?order=queue` pages by
a keyset (one index range per page) instead of sorting every action.

The order (tierflow_notifier.domain.queue.queue_key): open/acked before the rest, then the
priority class (critical, service, marketing), value at risk descending (unknown last), due
time (none last), action id. Generated columns keep it right whatever changes status.

Revision ID: 0013_action_queue
Revises: 0011_erasure_retention
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013_action_queue"
down_revision: str | None = "0011_erasure_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE_RANK = (
    "(CASE WHEN status IN ('open', 'acked') THEN 0 ELSE 3 END"
    " + CASE priority_class WHEN 'critical' THEN 0 WHEN 'service' THEN 1 ELSE 2 END)"
)


def upgrade() -> None:
    op.execute(
        "ALTER TABLE care_actions"
        " ADD COLUMN churn_probability double precision,"
        " ADD COLUMN clv double precision,"
        " ADD COLUMN value_at_risk double precision,"
        " ADD COLUMN owner_note text,"
        " ADD COLUMN reassigned_at timestamptz,"
        " ADD COLUMN cancelled_at timestamptz,"
        " ADD COLUMN cancel_reason text,"
        f" ADD COLUMN queue_rank smallint GENERATED ALWAYS AS ({QUEUE_RANK}) STORED,"
        " ADD COLUMN queue_risk double precision"
        " GENERATED ALWAYS AS (COALESCE(-value_at_risk, 'Infinity'::double precision)) STORED,"
        " ADD COLUMN queue_due timestamptz"
        " GENERATED ALWAYS AS (COALESCE(due_at, 'infinity'::timestamptz)) STORED"
    )
    op.execute(
        "CREATE INDEX ix_care_actions_queue"
        " ON care_actions (queue_rank, queue_risk, queue_due, action_id)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_care_actions_queue")
    op.execute(
        "ALTER TABLE care_actions DROP COLUMN queue_due, DROP COLUMN queue_risk,"
        " DROP COLUMN queue_rank, DROP COLUMN cancel_reason, DROP COLUMN cancelled_at,"
        " DROP COLUMN reassigned_at, DROP COLUMN owner_note, DROP COLUMN value_at_risk,"
        " DROP COLUMN clv, DROP COLUMN churn_probability"
    )
