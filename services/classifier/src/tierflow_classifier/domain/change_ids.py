"""Ids of changes and of the records that carry them, and which changes one record carries:
what the history (adapters/repository.py) and the outbox (service_layer/reclassify.py) agree
on. The derivation is documented in docs/cloudevents.md, "Event ids"."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from tierflow_classifier.domain.model import Change
from tierflow_common.contract.ids import uuid5

CHANGE_NAMESPACE = uuid.UUID("6f1c7a53-3c1e-4f0c-9a8e-2b7d4c1e9a10")

# The CloudEvents ids of version-2 records: their own namespace, so one can never equal a
# change id.
RECORD_NAMESPACE = uuid.uuid5(CHANGE_NAMESPACE, "customer-classification-changed/v2")

# A record's changes: one customer, one cause, one instant.
RecordKey = tuple[str, str, datetime]


def change_id(change: Change) -> str:
    """Stable per (cause, customer, dimension): a redelivered cause yields the same id
    (a UUID version 5 in CHANGE_NAMESPACE)."""
    return uuid5(CHANGE_NAMESPACE, f"{change.cause}|{change.customer_id}|{change.dimension}")


def record_id(change_ids: Iterable[str]) -> str:
    """A version-2 record's id: from the ids of the changes it carries (sorted). The history
    keeps each change id once, ever, so two different records never share an id even when one
    cause moves a customer twice at one instant; the same changes give the same id."""
    return uuid5(RECORD_NAMESPACE, "|".join(sorted(change_ids)))


def by_record(
    changes: Sequence[tuple[str, Change]],
) -> dict[RecordKey, list[tuple[str, Change]]]:
    """(change id, change) pairs grouped as records carry them, in first-seen order."""
    groups: dict[RecordKey, list[tuple[str, Change]]] = {}
    for cid, change in changes:
        key = (change.customer_id, change.cause, change.effective_at)
        groups.setdefault(key, []).append((cid, change))
    return groups
