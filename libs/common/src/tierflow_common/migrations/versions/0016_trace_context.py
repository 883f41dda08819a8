"""The W3C trace context of what caused a row: on outbox rows (the relay writes it as the
record's `ce_traceparent` / `ce_tracestate` headers) and on care actions (their webhook
deliveries and completion events send it as `traceparent`). JSON {"traceparent", "tracestate"};
NULL where the cause carried none. Nullable without a default: adding it rewrites nothing.

Revision ID: 0016_trace_context
Revises: 0013_action_queue
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_trace_context"
down_revision: str | None = "0013_action_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE outbox ADD COLUMN trace_context jsonb")
    op.execute("ALTER TABLE care_actions ADD COLUMN trace_context jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE care_actions DROP COLUMN trace_context")
    op.execute("ALTER TABLE outbox DROP COLUMN trace_context")
