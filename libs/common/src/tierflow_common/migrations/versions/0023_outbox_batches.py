"""Outbox rows of many records: up to 500 of the records one transaction wrote for one
producer, in order, as one MessagePack array (`records`) with their count (`record_count`).

A classifier batch of a thousand changes was a thousand rows, each inserted with two index
entries and a JSONB headers column to parse, then selected, printed back as text and deleted;
now it is two rows. The array is stored out of line uncompressed (STORAGE EXTERNAL): the
default compression, pglz, cost the server about 3 µs of CPU per record to save WAL that the
relay deletes within a second (pglz is what the embedded server has; lz4 would be cheaper).
Records pending in former rows are converted here, each to a row of its own (their ids keep
the order); a downgrade splits every row back into one row per record.

Revision ID: 0023_outbox_batches
Revises: 0022_customers_search_indexes (and needs 0016_trace_context)
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import msgspec
import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0023_outbox_batches"
down_revision: str | None = "0022_customers_search_indexes"
branch_labels: str | Sequence[str] | None = None
# The columns it replaces include 0016's trace_context, on another branch.
depends_on: str | Sequence[str] | None = "0016_trace_context"

# The format is this migration's own, written out here (not imported) so that it stays what
# the rows it converts were written in: [[topic, key, value, [[name, value], ...]], ...].
_Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


def _trace_headers(trace: Any) -> list[tuple[str, bytes]]:
    if not isinstance(trace, dict) or not trace.get("traceparent"):
        return []
    out = [("ce_traceparent", str(trace["traceparent"]).encode())]
    if trace.get("tracestate"):
        out.append(("ce_tracestate", str(trace["tracestate"]).encode()))
    return out


def upgrade() -> None:
    op.execute("ALTER TABLE outbox ADD COLUMN records bytea, ADD COLUMN record_count integer")
    bind = op.get_bind()
    encode = msgspec.msgpack.Encoder().encode
    rows = bind.execute(
        sa.text(
            "SELECT id, topic, key, value, headers::text, trace_context::text FROM outbox "
            "ORDER BY id"
        )
    ).all()
    for id_, topic, key, value, headers_json, trace_json in rows:
        headers = [(k, v.encode()) for k, v in orjson.loads(headers_json)]
        trace = orjson.loads(trace_json) if trace_json else None
        if not any(k == "ce_traceparent" for k, _ in headers):
            headers = sorted([*headers, *_trace_headers(trace)])
        record: _Record = (topic, key, value, headers)
        bind.execute(
            sa.text("UPDATE outbox SET records = :r, record_count = 1 WHERE id = :id"),
            {"r": encode([record]), "id": id_},
        )
    op.execute(
        "ALTER TABLE outbox DROP COLUMN topic, DROP COLUMN key, DROP COLUMN value, "
        "DROP COLUMN headers, DROP COLUMN trace_context, "
        "ALTER COLUMN records SET NOT NULL, ALTER COLUMN record_count SET NOT NULL, "
        "ALTER COLUMN records SET STORAGE EXTERNAL"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE outbox ADD COLUMN topic text, ADD COLUMN key bytea, ADD COLUMN value bytea, "
        "ADD COLUMN headers jsonb, ADD COLUMN trace_context jsonb"
    )
    bind = op.get_bind()
    decode = msgspec.msgpack.Decoder(list[_Record]).decode
    rows = bind.execute(
        sa.text("SELECT id, producer, records, created_at FROM outbox ORDER BY id")
    ).all()
    for id_, producer, records, created_at in rows:
        for topic, key, value, headers in decode(records):
            # The trace headers stay in the headers, where the former relay keeps them.
            bind.execute(
                sa.text(
                    "INSERT INTO outbox (producer, topic, key, value, headers, created_at, "
                    "records, record_count) VALUES (:p, :t, :k, :v, CAST(:h AS jsonb), :c, "
                    "'', 1)"
                ),
                {
                    "p": producer,
                    "t": topic,
                    "k": key,
                    "v": value,
                    "h": orjson.dumps(
                        [[n, v.decode("utf-8", "backslashreplace")] for n, v in headers]
                    ).decode(),
                    "c": created_at,
                },
            )
        bind.execute(sa.text("DELETE FROM outbox WHERE id = :id"), {"id": id_})
    op.execute(
        "ALTER TABLE outbox DROP COLUMN records, DROP COLUMN record_count, "
        "ALTER COLUMN topic SET NOT NULL, ALTER COLUMN value SET NOT NULL, "
        "ALTER COLUMN headers SET NOT NULL"
    )
