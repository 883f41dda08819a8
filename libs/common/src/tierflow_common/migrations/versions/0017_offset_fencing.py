"""Fenced stored offsets: each partition's row carries the epoch of the member that claimed it
last (bumped at every assignment) and a diagnostic owner name; an offset write is a
compare-and-set on the epoch, so a zombie whose partitions moved cannot write (see
tierflow_common/fencing.py). Existing rows start at epoch 0: the first claim takes them.

Revision ID: 0017_offset_fencing
Revises: 0013_action_queue
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017_offset_fencing"
down_revision: str | None = "0013_action_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE consumer_offsets"
        " ADD COLUMN owner_epoch bigint NOT NULL DEFAULT 0,"
        " ADD COLUMN owner text"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE consumer_offsets DROP COLUMN owner, DROP COLUMN owner_epoch")
