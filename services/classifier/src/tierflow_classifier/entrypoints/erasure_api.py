"""`DELETE /v1/customers/{id}`: erase a customer (admin).

The classifier's records go at once, in the request's own unit of work, by the same use case an
upstream `customer.erased` event runs (service_layer/erasure.py); the `tierflow.customer.erased`
record it puts in the outbox tells the notifier and downstream systems to erase theirs, so the
answer is 202: accepted everywhere, done here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tierflow_classifier.service_layer.erasure import erase_customer
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.auth import Role, requires
from tierflow_common.contract.events import CustomerId
from tierflow_common.erasure import API_CAUSE
from tierflow_common.settings import TopicSettings


class ErasureOut(BaseModel):
    customer_id: str
    erased_through: datetime = Field(
        description="Events for this id dated at or before this instant are the erased "
        "customer's and are dropped; later ones start a new customer"
    )
    found: bool = Field(description="Whether the classifier held anything about the customer")
    erased: dict[str, int] = Field(description="Rows deleted by the classifier, per table")


def build_erasure_router(
    unit_of_work: Callable[[], UnitOfWork], topics: TopicSettings
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["customers"])

    @router.delete(
        "/customers/{customer_id}",
        status_code=202,
        response_model=ErasureOut,
        dependencies=[requires(Role.ADMIN)],
        summary="Erase a customer everywhere (classifier now; notifier and downstream via "
        "the tierflow.customer.erased record)",
    )
    async def erase(customer_id: CustomerId) -> ErasureOut:
        now = datetime.now(UTC)
        async with unit_of_work() as uow:
            done = await erase_customer(
                uow, customer_id, through=now, cause=API_CAUSE, now=now, topics=topics
            )
        rows = done.rows
        return ErasureOut(
            customer_id=customer_id,
            erased_through=done.erased_through,
            found=rows.found,
            erased={
                "customers": rows.customers,
                "customer_labels": rows.labels,
                "classification_changes": rows.changes,
                "processed_events": rows.ledger,
                "ingest_receipts": rows.receipts,
            },
        )

    return router
