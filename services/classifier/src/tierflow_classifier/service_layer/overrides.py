"""Asking for a manual override: check it against the rule set in force, then publish it as a
`classification.override` event on the customer-events topic. The classifier applies it when
its consumer reads it (domain/overrides.py), in order with the customer's other events; the
review scheduler ends it at its expiry."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tierflow_classifier.domain.overrides import override_problem
from tierflow_classifier.domain.rules import RuleSet
from tierflow_common.contract import EmittedEvent
from tierflow_common.contract.customer_events import OVERRIDE_TYPE, OverrideData

SOURCE = "tierflow/classifier"


class Publisher(Protocol):
    async def publish(self, event: EmittedEvent) -> None: ...


class OverrideRejected(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class Requested:
    override_id: str
    event_id: str
    expires_at: datetime | None


async def request_override(
    publisher: Publisher,
    rules: RuleSet,
    *,
    customer_id: str,
    dimension: str,
    label: str | None,
    reason: str,
    expires_at: datetime | None,
    by: str,
    now: datetime,
) -> Requested:
    """Publish an override (`label` None: clear the one in force); returns once the broker
    acknowledged it. OverrideRejected names the field the rule set cannot take."""
    problem = override_problem(rules, dimension, label)
    if problem is not None:
        raise OverrideRejected(*problem)
    if expires_at is not None and expires_at <= now:
        raise OverrideRejected("expires_at", f"{expires_at.isoformat()} is not in the future")
    override_id, event_id = f"ovr-{uuid.uuid4().hex[:16]}", str(uuid.uuid4())
    data = OverrideData(
        dimension=dimension,
        label=label,
        reason=reason,
        expires_at=expires_at,
        override_id=override_id,
        by=by,
    )
    await publisher.publish(
        EmittedEvent(
            id=event_id,
            type=OVERRIDE_TYPE,
            source=SOURCE,
            subject=customer_id,
            time=now,
            data=data.model_dump(mode="json"),
        )
    )
    return Requested(override_id, event_id, expires_at)
