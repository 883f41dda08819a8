"""Notifier: care-action details and task states, contact projection, schedules, contact
ledger and webhook deliveries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_EMPTY = sa.text("'{}'::jsonb")
_TS = sa.DateTime(timezone=True)

_ACTION_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("priority_class", sa.Text, nullable=False, server_default="service"),
    sa.Column("owner", sa.Text, nullable=True),
    sa.Column("channel", sa.Text, nullable=True),
    sa.Column("due_at", _TS, nullable=True),
    sa.Column("deliver_at", _TS, nullable=True),
    sa.Column("explanation", JSONB, nullable=False, server_default=_EMPTY),
    sa.Column("details", JSONB, nullable=False, server_default=_EMPTY),
    sa.Column("suppressed_reason", sa.Text, nullable=True),
    sa.Column("acked_at", _TS, nullable=True),
    sa.Column("completed_at", _TS, nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),
]


def upgrade() -> None:
    for column in _ACTION_COLUMNS:
        op.add_column("care_actions", column)
    op.execute("UPDATE care_actions SET status = 'open' WHERE status = 'created'")
    op.alter_column("care_actions", "status", server_default="open")
    op.create_index("ix_care_actions_status_created", "care_actions", ["status", "created_at"])
    op.create_table(
        "notifier_contacts",
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("timezone", sa.Text, nullable=True),
        sa.Column("birthday", sa.Date, nullable=True),
        sa.Column("preferred_channel", sa.Text, nullable=True),
        sa.Column("marketing_consent", sa.Boolean, nullable=True),
        sa.Column("channel_consent", JSONB, nullable=False, server_default=_EMPTY),
        sa.Column("labels", JSONB, nullable=False, server_default=_EMPTY),
        sa.Column("first_purchase_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False, server_default=_NOW),
    )
    op.create_table(
        "notifier_complaints",
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("complaint_id", sa.Text, nullable=False),
        sa.Column("opened_at", _TS, nullable=True),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("customer_id", "complaint_id"),
    )
    op.create_table(
        "notifier_schedules",
        sa.Column("schedule_id", sa.Text, primary_key=True),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("anchor_at", _TS, nullable=False),
        sa.Column("period", sa.Integer, nullable=False, server_default="1"),
        sa.Column("ref", sa.Text, nullable=True),
        sa.Column("created_at", _TS, nullable=False, server_default=_NOW),
    )
    op.create_index("ix_notifier_schedules_due", "notifier_schedules", ["due_at"])
    op.create_index("ix_notifier_schedules_customer", "notifier_schedules", ["customer_id"])
    op.create_table(
        "contact_ledger",
        sa.Column("action_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("priority_class", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=True),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_index("ix_contact_ledger_customer_at", "contact_ledger", ["customer_id", "at"])
    op.create_table(
        "care_deliveries",
        sa.Column("delivery_id", sa.Text, primary_key=True),
        sa.Column("action_id", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False, server_default=_NOW),
        sa.Column("updated_at", _TS, nullable=False, server_default=_NOW),
        sa.UniqueConstraint("action_id", "endpoint", name="uq_care_deliveries_action_endpoint"),
    )
    op.create_index(
        "ix_care_deliveries_pending",
        "care_deliveries",
        ["endpoint", "next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index("ix_care_deliveries_state", "care_deliveries", ["state", "delivery_id"])


def downgrade() -> None:
    for table in (
        "care_deliveries",
        "contact_ledger",
        "notifier_schedules",
        "notifier_complaints",
        "notifier_contacts",
    ):
        op.drop_table(table)
    op.drop_index("ix_care_actions_status_created", table_name="care_actions")
    op.alter_column("care_actions", "status", server_default="created")
    for column in reversed(_ACTION_COLUMNS):
        op.drop_column("care_actions", column.name)
