"""The notifier's one erasure use case, run for a `tierflow.customer.erased` record off
`customer-classification-changed` inside the change consumer's transaction (its unit of work:
the offsets commit with it).

It deletes the customer's care actions, their deliveries, the contact-ledger entries, the
schedules and the contact projection (profile, consent, labels, complaints), and remembers
the erasure (tierflow_common/erasure.py), so that the projection of customer-events drops the
erased customer's events dated through the boundary wherever they come from (a backlog, a
replay) and starts a new customer with later ones.
"""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.erasure import record_erasure
from tierflow_notifier.adapters import erasure as store
from tierflow_notifier.adapters import repository
from tierflow_notifier.adapters.changes import Erasure
from tierflow_notifier.adapters.erasure import ErasedRows

log = structlog.get_logger(__name__)

SERVICE = "notifier"


async def erase_customer(conn: AsyncConnection, erasure: Erasure) -> ErasedRows:
    customer_id = erasure.customer_id
    # In this order: the projection's lock, the scheduler's claimed rows, then the contact
    # decisions' lock (which the scheduler asks for while holding its rows).
    await store.lock_for_erasure(conn, customer_id)
    await repository.lock_customers(conn, [customer_id])
    rows = await store.erase_rows(conn, customer_id)
    await record_erasure(conn, SERVICE, customer_id, erasure.erased_through)
    log.info(
        "customer_erased",
        customer_id=customer_id,
        actions=rows.actions,
        deliveries=rows.deliveries,
        ledger=rows.ledger,
        schedules=rows.schedules,
    )
    return rows
