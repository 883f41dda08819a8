"""The classifier's one erasure use case: erase a customer inside the caller's unit of work.

Both ways in come here: `DELETE /v1/customers/{id}` (entrypoints/erasure_api.py, its own unit
of work) and an upstream `customer.erased` event (service_layer/handler.py, inside the
consumer's). Under the customer's lock — the one every writer of a customer takes — it deletes
the customer's state, labels, change history and event-id ledger entries (with the ingest's
receipts of those events), remembers the erasure (tierflow_common/erasure.py: later events
dated through the boundary are dropped, later ones start a new customer) and puts a
`tierflow.customer.erased` record in the outbox, on `customer-classification-changed`: the
notifier erases its own records when it reads it, downstream systems theirs. The population
statistics forget the customer at their next rebuild (they are rebuilt from the customers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from tierflow_classifier.adapters.erasure import ErasedRows
from tierflow_classifier.domain.erasure import boundary
from tierflow_classifier.service_layer.reclassify import SOURCE
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.erasure import erased_event
from tierflow_common.settings import TopicSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Erased:
    customer_id: str
    erased_through: datetime
    rows: ErasedRows


async def erase_customer(
    uow: UnitOfWork,
    customer_id: str,
    *,
    through: datetime,
    cause: str,
    now: datetime,
    topics: TopicSettings,
    locked: bool = False,
) -> Erased:
    """Erase `customer_id` through `through` (inside the caller's `async with uow:`)."""
    if not locked:
        await uow.customers.lock([customer_id])
    rows = await uow.erasures.erase(customer_id)
    erased_through = await uow.erasures.record(customer_id, boundary(through, rows.latest_event))
    uow.outbox.add(
        [
            (
                topics.classification_changed,
                erased_event(
                    customer_id,
                    cause=cause,
                    erased_through=erased_through,
                    erased_at=now,
                    source=SOURCE,
                ),
            )
        ]
    )
    log.info(
        "customer_erased",
        customer_id=customer_id,
        cause=cause,
        customers=rows.customers,
        changes=rows.changes,
        ledger=rows.ledger,
        receipts=rows.receipts,
    )
    return Erased(customer_id, erased_through, rows)
