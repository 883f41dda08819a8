"""Erasure and retention: the erased-customers table, an index to find a customer's entries in
the event-id ledger, and BRIN indexes for pruning change history and the contact ledger by age
(both are appended in time order, so a BRIN index costs next to nothing on insert).

`processed_events` is partitioned: the index is created on the parent, which builds it on every
partition; weeks created later get it when they are attached.

Revision ID: 0011_erasure_retention
Revises: 0008_ledger_partitions (and needs 0006_notifier_claim)
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011_erasure_retention"
down_revision: str | None = "0008_ledger_partitions"
branch_labels: str | Sequence[str] | None = None
# The notifier's tables (contact_ledger) come on their own branch.
depends_on: str | Sequence[str] | None = "0006_notifier_claim"


def upgrade() -> None:
    op.execute("CREATE SEQUENCE customer_erasures_seq")
    op.execute(
        "CREATE TABLE customer_erasures (service text NOT NULL, customer_key bytea NOT NULL, "
        "erased_through timestamptz NOT NULL, erased_at timestamptz NOT NULL DEFAULT now(), "
        "seq bigint NOT NULL DEFAULT nextval('customer_erasures_seq'), "
        "CONSTRAINT customer_erasures_pkey PRIMARY KEY (service, customer_key))"
    )
    op.execute("ALTER SEQUENCE customer_erasures_seq OWNED BY customer_erasures.seq")
    op.execute("CREATE INDEX ix_customer_erasures_seq ON customer_erasures (service, seq)")
    op.execute("CREATE INDEX ix_processed_events_customer ON processed_events (customer_id)")
    op.execute(
        "CREATE INDEX ix_changes_recorded_at_brin ON classification_changes "
        "USING brin (recorded_at)"
    )
    op.execute("CREATE INDEX ix_contact_ledger_at_brin ON contact_ledger USING brin (at)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_contact_ledger_at_brin")
    op.execute("DROP INDEX ix_changes_recorded_at_brin")
    op.execute("DROP INDEX ix_processed_events_customer")
    op.execute("DROP TABLE customer_erasures")
