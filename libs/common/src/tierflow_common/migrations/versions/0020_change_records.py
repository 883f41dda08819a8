"""Change history stored one row per record: a cause's changes to one customer at one instant
(what one `customer-classification-changed` record carries) in one row, instead of one row per
dimension.

A first purchase changes four dimensions: it wrote four history rows, each with three index
entries, on top of the customer's row and labels; the bench counted 22.7 rows written per event
end to end (docs/benchmarks.md, "Rows and records per event"). `classification_records` holds
the changes as a JSONB array in the shape of the record's `changes`; `classification_changes`
becomes a view that expands it, with the columns the table had, so every reader (the history
and `?as_of=` queries, the CDNOW checks, the console) reads what it read before.

`record_id` is the CloudEvents id of the record that carried the changes (rows moved here from
the old table get an id of their own, `m-` + the md5 of their change ids). A change id is still
recorded once, ever: the writer looks up the ids already recorded for each (customer, cause) in
the batch, under the customers' locks (adapters/repository.py).

Revision ID: 0020_change_records
Revises: 0019_delivery_fillfactor
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020_change_records"
down_revision: str | None = "0019_delivery_fillfactor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VIEW = """
CREATE VIEW classification_changes AS
SELECT c.change_id, r.customer_id, c.dimension, c."from" AS from_label, c."to" AS to_label,
       c.reason, coalesce(c.explanation, '{}'::jsonb) AS explanation, r.cause, r.effective_at,
       c.rule_set_version, r.recorded_at
FROM classification_records AS r
CROSS JOIN LATERAL jsonb_to_recordset(r.changes) AS c(
  change_id text, dimension text, "from" text, "to" text, reason text, explanation jsonb,
  rule_set_version text)
"""


def upgrade() -> None:
    op.execute(
        "CREATE TABLE classification_records (record_id text PRIMARY KEY, "
        "customer_id text NOT NULL, cause text NOT NULL, effective_at timestamptz NOT NULL, "
        "changes jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "INSERT INTO classification_records "
        "(record_id, customer_id, cause, effective_at, changes, recorded_at) "
        "SELECT 'm-' || md5(string_agg(change_id, '|' ORDER BY change_id)), customer_id, cause, "
        "effective_at, jsonb_agg(jsonb_build_object('change_id', change_id, "
        "'dimension', dimension, 'from', from_label, 'to', to_label, 'reason', reason, "
        "'explanation', explanation, 'rule_set_version', rule_set_version) ORDER BY change_id), "
        "min(recorded_at) FROM classification_changes "
        "GROUP BY customer_id, cause, effective_at, recorded_at"
    )
    op.execute("DROP TABLE classification_changes")
    # The writer's look-up of ids already recorded, and a customer's history (its prefix).
    op.execute(
        "CREATE INDEX ix_change_records_customer_cause "
        "ON classification_records (customer_id, cause)"
    )
    op.execute(
        "CREATE INDEX ix_change_records_recorded_at_brin ON classification_records "
        "USING brin (recorded_at)"
    )
    op.execute(_VIEW)


def downgrade() -> None:
    op.execute("ALTER VIEW classification_changes RENAME TO classification_changes_view")
    op.execute("CREATE TABLE classification_changes AS SELECT * FROM classification_changes_view")
    op.execute("DROP VIEW classification_changes_view")
    op.execute("DROP TABLE classification_records")
    op.execute("ALTER TABLE classification_changes ADD PRIMARY KEY (change_id)")
    required = (
        "customer_id", "dimension", "to_label", "reason", "explanation", "cause",
        "effective_at", "rule_set_version", "recorded_at",
    )  # fmt: skip
    for column in required:
        op.execute(f"ALTER TABLE classification_changes ALTER COLUMN {column} SET NOT NULL")
    op.execute("ALTER TABLE classification_changes ALTER COLUMN recorded_at SET DEFAULT now()")
    op.execute(
        "CREATE INDEX ix_changes_customer_dimension_time "
        "ON classification_changes (customer_id, dimension, effective_at)"
    )
    op.execute(
        "CREATE INDEX ix_changes_recorded_at_brin ON classification_changes "
        "USING brin (recorded_at)"
    )
