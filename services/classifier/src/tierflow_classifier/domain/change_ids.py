"""Ids of changes and of the records that carry them, and which changes one record carries:
what the history (adapters/repository.py) and the outbox (service_layer/reclassify.py) agree
on. The derivation is documented in docs/cloudevents.md, "Event ids"."""

from __future__ import annotations

import uuid
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tierflow_classifier.domain.model import Change, dimension_change
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


def new_changes(
    changes: Iterable[tuple[str, Change]], known: Container[str] = ()
) -> list[tuple[str, Change]]:
    """The (change id, change) pairs a history records: each id's first occurrence, without
    those `known` to it already (the same cause, customer and dimension computed again)."""
    first: dict[str, Change] = {}
    for cid, change in changes:
        if cid not in known and cid not in first:
            first[cid] = change
    return list(first.items())


@dataclass(frozen=True)
class ChangeRecord:
    """The changes one `customer-classification-changed` record carries, as the history
    stores them (one row) and the record's `changes` holds them (`body`): built once for
    both."""

    record_id: str
    customer_id: str
    cause: str
    effective_at: datetime
    items: list[tuple[str, Change]]
    body: list[dict[str, Any]]


def change_records_of(changes: Sequence[tuple[str, Change]]) -> list[ChangeRecord]:
    """(change id, change) pairs as the records that carry them, in first-seen order."""
    return [
        ChangeRecord(
            record_id(cid for cid, _ in items),
            customer,
            cause,
            at,
            items,
            [dimension_change(cid, c) for cid, c in items],
        )
        for (customer, cause, at), items in by_record(changes).items()
    ]
