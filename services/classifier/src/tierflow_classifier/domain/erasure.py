"""Erasure of a customer, as the classifier sees it: a request (an upstream `customer.erased`
event, or the API) and the instant through which the customer's events are the erased one's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tierflow_classifier.domain.model import EventMeta


@dataclass(frozen=True, slots=True)
class EraseRequest:
    """An upstream `customer.erased` event: erase `meta.customer_id` through `meta.time`."""

    meta: EventMeta


def boundary(requested: datetime, latest_event: datetime | None) -> datetime:
    """Through when events belong to the erased customer: the instant asked for, or the latest
    event the customer had if that is later (an event dated ahead of the request was applied
    before it, so it is the erased customer's, and a resend of it must not bring it back)."""
    if latest_event is not None and latest_event > requested:
        return latest_event
    return requested
