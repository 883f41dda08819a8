"""What every service needs to erase a customer and keep them erased (the use cases live in
each service: services/*/service_layer/erasure.py).

An erasure leaves one row per service in `customer_erasures`: the customer id's SHA-256 and
the instant through which the customer's events belong to the erased customer. An event for
that customer dated at or before it arrives later (a resend, a replay of the topic, a batch
in flight at the time) and is dropped, so nothing erased comes back; an event dated after it
starts a new customer under the same id. Only the digest is kept: nothing in the table names
the customer, yet a service can tell whether an id it is handed was erased.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.contract.events import CUSTOMER_ERASED_TYPE
from tierflow_common.contract.ids import rfc3339, uuid5
from tierflow_common.contract.kafka_binding import EmittedEvent
from tierflow_common.db.raw import raw_connection

ERASED_NAMESPACE = uuid.UUID("0b8f7c6e-5d2a-4e47-9b1f-3a6c2e8d4f10")
API_CAUSE = "api"


def customer_key(customer_id: str) -> bytes:
    return hashlib.sha256(customer_id.encode()).digest()


# A second erasure of the same id moves the boundary forward only (never back).
_RECORD = (
    "INSERT INTO customer_erasures (service, customer_key, erased_through) VALUES ($1, $2, $3) "
    "ON CONFLICT (service, customer_key) DO UPDATE SET "
    "erased_through = greatest(customer_erasures.erased_through, excluded.erased_through), "
    "erased_at = now(), seq = nextval('customer_erasures_seq') RETURNING erased_through"
)
_THROUGH = (
    "SELECT customer_key, erased_through FROM customer_erasures "
    "WHERE service = $1 AND customer_key = ANY($2::bytea[])"
)
_EPOCH = "SELECT coalesce(max(seq), 0) FROM customer_erasures WHERE service = $1"


async def record_erasure(
    conn: AsyncConnection, service: str, customer_id: str, through: datetime
) -> datetime:
    """Note that `service` erased the customer through `through`; the boundary now in force."""
    raw = await raw_connection(conn)
    value: datetime = await raw.fetchval(_RECORD, service, customer_key(customer_id), through)
    return value


async def erased_through(
    conn: AsyncConnection, service: str, customer_ids: Iterable[str]
) -> dict[str, datetime]:
    """The boundary of each of these customers that `service` erased (the others are absent).
    Read it after taking the customers' locks, so an erasure committed meanwhile is seen."""
    keys = {customer_key(c): c for c in set(customer_ids)}
    if not keys:
        return {}
    raw = await raw_connection(conn)
    rows = await raw.fetch(_THROUGH, service, list(keys))
    return {keys[bytes(r[0])]: r[1] for r in rows}


async def erasure_epoch(conn: AsyncConnection, service: str) -> int:
    """Grows with every erasure `service` records: a per-customer cache is stale once it moved."""
    raw = await raw_connection(conn)
    value: int = await raw.fetchval(_EPOCH, service)
    return value


def is_erased(boundaries: dict[str, datetime], customer_id: str, at: datetime) -> bool:
    """Whether an event of this customer dated `at` belongs to an erased customer."""
    through = boundaries.get(customer_id)
    return through is not None and at <= through


def erased_event(
    customer_id: str,
    *,
    cause: str,
    erased_through: datetime,
    erased_at: datetime,
    source: str,
) -> EmittedEvent:
    """The `tierflow.customer.erased` record (CustomerErasedData): its id is stable per cause,
    customer and boundary, so a redelivered erasure publishes the same record again."""
    through = rfc3339(erased_through)
    return EmittedEvent(
        id=uuid5(ERASED_NAMESPACE, f"{cause}|{customer_id}|{through}"),
        type=CUSTOMER_ERASED_TYPE,
        source=source,
        subject=customer_id,
        time=erased_at,
        data={
            "customer_id": customer_id,
            "cause": cause,
            "erased_through": through,
            "erased_at": rfc3339(erased_at),
        },
    )
