"""A customer's rows in the classifier's tables, erased in one statement.

The ingest's receipts of the customer's events go with the event-id ledger's entries: a receipt
holds no customer id, the ledger entry of the same (source, id, time) does, and both live in
the one database. (Receipts of events the classifier never applied — still in flight at the
time, or older than the ledger's window — stay until INGEST_RECEIPT_RETENTION_DAYS drops
them; nothing ties them to the customer any more.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.raw import raw_connection


@dataclass(frozen=True)
class ErasedRows:
    """Rows deleted per table (`changes`: the changes of the history's rows, one row per
    record), and the latest event time the ledger held for the customer."""

    customers: int = 0
    labels: int = 0
    changes: int = 0
    ledger: int = 0
    receipts: int = 0
    latest_event: datetime | None = None

    @property
    def found(self) -> bool:
        return bool(self.customers or self.changes or self.ledger)


_ERASE = """
WITH ledger AS (
  DELETE FROM processed_events WHERE customer_id = $1 RETURNING source, event_id, event_time
), receipts AS (
  DELETE FROM ingest_receipts AS r USING ledger AS l
  WHERE r.source = l.source AND r.event_id = l.event_id AND r.event_time = l.event_time
  RETURNING 1
), labels AS (
  DELETE FROM customer_labels WHERE customer_id = $1 RETURNING 1
), changes AS (
  DELETE FROM classification_records WHERE customer_id = $1
  RETURNING jsonb_array_length(changes) AS n
), customer AS (
  DELETE FROM customers WHERE customer_id = $1 RETURNING 1
)
SELECT (SELECT count(*) FROM customer), (SELECT count(*) FROM labels),
       (SELECT coalesce(sum(n), 0) FROM changes), (SELECT count(*) FROM ledger),
       (SELECT count(*) FROM receipts),
       (SELECT max(event_time) FROM ledger WHERE event_time > '-infinity')
"""


async def erase_rows(conn: AsyncConnection, customer_id: str) -> ErasedRows:
    """Delete the customer's state, labels, change history, ledger entries and receipts."""
    raw = await raw_connection(conn)
    row = await raw.fetchrow(_ERASE, customer_id)
    return ErasedRows(*row)
