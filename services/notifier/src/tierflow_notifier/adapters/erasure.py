"""A customer's rows in the notifier's tables, erased; and the lock that keeps the contact
projection from writing a customer while it is being erased.

The erasure lock is a transaction-level advisory lock of its own key space: the projection of
customer-events takes it shared for the customers it writes (so projections never wait for one
another), the erasure takes it exclusive, so one always sees the other's outcome. It is not the
contact-decision lock (repository.lock_customers), which the scheduler takes while holding its
claimed schedule rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.raw import raw_connection

_SHARED = (
    "SELECT pg_advisory_xact_lock_shared(k) FROM ("
    " SELECT DISTINCT hashtextextended(c, 7414) AS k"
    " FROM unnest($1::text[]) AS c ORDER BY k) AS keys"
)
_EXCLUSIVE = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7414))"
# Waits for a scheduler that claimed (row-locked) one of the customer's entries to commit,
# before the erasure takes the contact-decision lock that scheduler is about to ask for.
_SCHEDULES_FIRST = "DELETE FROM notifier_schedules WHERE customer_id = $1"
_ERASE = """
WITH actions AS (
  DELETE FROM care_actions WHERE customer_id = $1 RETURNING action_id
), deliveries AS (
  DELETE FROM care_deliveries AS d USING actions AS a WHERE d.action_id = a.action_id
  RETURNING 1
), ledger AS (
  DELETE FROM contact_ledger WHERE customer_id = $1 RETURNING 1
), schedules AS (
  DELETE FROM notifier_schedules WHERE customer_id = $1 RETURNING 1
), contacts AS (
  DELETE FROM notifier_contacts WHERE customer_id = $1 RETURNING 1
), complaints AS (
  DELETE FROM notifier_complaints WHERE customer_id = $1 RETURNING 1
)
SELECT (SELECT count(*) FROM actions), (SELECT count(*) FROM deliveries),
       (SELECT count(*) FROM ledger), (SELECT count(*) FROM schedules),
       (SELECT count(*) FROM contacts), (SELECT count(*) FROM complaints)
"""


@dataclass(frozen=True)
class ErasedRows:
    actions: int = 0
    deliveries: int = 0
    ledger: int = 0
    schedules: int = 0
    contacts: int = 0
    complaints: int = 0


async def lock_shared(conn: AsyncConnection, customer_ids: Iterable[str]) -> None:
    """Keep these customers from being erased until this transaction ends."""
    ids = sorted(set(customer_ids))
    if ids:
        raw = await raw_connection(conn)
        await raw.execute(_SHARED, ids)


async def lock_for_erasure(conn: AsyncConnection, customer_id: str) -> None:
    """Wait until no projection writes the customer, and keep new ones out."""
    raw = await raw_connection(conn)
    await raw.execute(_EXCLUSIVE, customer_id)
    await raw.execute(_SCHEDULES_FIRST, customer_id)


async def erase_rows(conn: AsyncConnection, customer_id: str) -> ErasedRows:
    """Delete the customer's actions with their deliveries, contact-ledger entries, schedules,
    contact row and complaints (take the contact-decision lock first)."""
    raw = await raw_connection(conn)
    row = await raw.fetchrow(_ERASE, customer_id)
    return ErasedRows(*row)
