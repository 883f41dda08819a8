"""The care-action work queue: which action a person should take next, and which are late. Pure.

Open and acknowledged actions come first; among them critical before service before marketing
work; within a class the customer with the most value at risk (P(churn) x CLV, as the classifier
knew it when the action was planned) first, unknown value last; then the earliest due time (none
last); the action id breaks every tie, so the order is total and a cursor can resume it.

The database keeps the same key in stored columns (migration 0013: queue_rank, queue_risk,
queue_due) and pages by it; an integration test holds the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

OPEN_STATES = frozenset({"open", "acked"})
CLASS_RANK = {"critical": 0, "service": 1, "marketing": 2}
# What the database stores for "no due time" (PostgreSQL's 'infinity' sorts after every time).
NO_DUE = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Scores:
    """The customer's churn risk and value on the change that caused an action."""

    churn_probability: float | None = None
    clv: float | None = None
    value_at_risk: float | None = None

    @classmethod
    def of(cls, churn_probability: object, clv: object, value_at_risk: object) -> Scores | None:
        """Finite numbers only (anything else is unknown); None when nothing is known."""
        values = [
            float(v) if isinstance(v, int | float) and math.isfinite(v) else None
            for v in (churn_probability, clv, value_at_risk)
        ]
        if all(v is None for v in values):
            return None
        return cls(*values)


QueueKey = tuple[int, float, datetime, str]


def queue_rank(status: str, priority_class: str) -> int:
    return (0 if status in OPEN_STATES else 3) + CLASS_RANK.get(priority_class, 2)


def queue_key(
    *,
    action_id: str,
    status: str,
    priority_class: str,
    value_at_risk: float | None,
    due_at: datetime | None,
) -> QueueKey:
    """An ascending sort key for the queue order (the stored columns' values)."""
    risk = math.inf if value_at_risk is None else -value_at_risk
    return (queue_rank(status, priority_class), risk, due_at or NO_DUE, action_id)


def is_overdue(status: str, due_at: datetime | None, now: datetime) -> bool:
    """Still to do (open or acknowledged) and past its due time."""
    return status in OPEN_STATES and due_at is not None and due_at < now
