"""Access control: API keys carry roles (every key made before is an `ingest` key, so senders
upstream keep working), and the audit log of `operate`/`admin` calls.

Revision ID: 0010_access_control
Revises: 0008_ledger_partitions
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0010_access_control"
down_revision: str | None = "0008_ledger_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("ingest", "read", "operate", "admin")


def upgrade() -> None:
    # A constant default: existing rows get it without a table rewrite.
    op.add_column(
        "api_keys",
        sa.Column("roles", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{ingest}'")),
    )
    allowed = ", ".join(f"'{r}'" for r in ROLES)
    op.create_check_constraint(
        "ck_api_keys_roles",
        "api_keys",
        f"cardinality(roles) > 0 AND roles <@ ARRAY[{allowed}]::text[]",
    )
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=True),
        sa.Column("key_name", sa.Text, nullable=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("target", JSONB, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_key_id", "audit_log", ["key_id", "audit_id"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_constraint("ck_api_keys_roles", "api_keys")
    op.drop_column("api_keys", "roles")
