"""The care-action queue order and the overdue flag (domain/queue.py), as properties."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tierflow_notifier.domain.queue import (
    CLASS_RANK,
    OPEN_STATES,
    QueueKey,
    is_overdue,
    queue_key,
)

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
STATUSES = ["open", "acked", "done", "suppressed", "cancelled"]


@dataclass(frozen=True)
class Item:
    action_id: str
    status: str
    priority_class: str
    value_at_risk: float | None
    due_at: datetime | None

    @property
    def key(self) -> QueueKey:
        return queue_key(
            action_id=self.action_id,
            status=self.status,
            priority_class=self.priority_class,
            value_at_risk=self.value_at_risk,
            due_at=self.due_at,
        )

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATES


items = st.builds(
    Item,
    action_id=st.text("0123456789abcdef-", min_size=1, max_size=6),
    status=st.sampled_from(STATUSES),
    priority_class=st.sampled_from(list(CLASS_RANK)),
    value_at_risk=st.none() | st.floats(-10.0, 1e6, allow_nan=False),
    due_at=st.none() | st.integers(-100, 100).map(lambda h: NOW + timedelta(hours=h)),
)


def distinct(drawn: list[Item]) -> list[Item]:
    return list({a.action_id: a for a in drawn}.values())


queues = st.lists(items, max_size=30).map(distinct)


@given(queues)
def test_the_queue_is_open_work_first_by_class_then_value_at_risk_then_due_time(
    queue: list[Item],
) -> None:
    ordered = sorted(queue, key=lambda a: a.key)
    for a, b in itertools.pairwise(ordered):
        assert a.is_open or not b.is_open, "open or acknowledged work comes before the rest"
        if a.is_open != b.is_open:
            continue
        ra, rb = CLASS_RANK[a.priority_class], CLASS_RANK[b.priority_class]
        assert ra <= rb, "critical before service before marketing"
        if ra != rb:
            continue
        va, vb = a.value_at_risk, b.value_at_risk
        if vb is not None:
            assert va is not None, "an unknown value at risk comes after every known one"
            assert va >= vb, "more value at risk first"
        if va != vb:
            continue
        if b.due_at is not None:
            assert a.due_at is not None, "no due time comes after every due time"
            assert a.due_at <= b.due_at, "the earlier due time first"
        if a.due_at == b.due_at:
            assert a.action_id < b.action_id, "the action id breaks the tie"


@given(queues, st.randoms())
def test_the_order_is_total_any_input_order_gives_the_same_queue(
    queue: list[Item], rnd: random.Random
) -> None:
    shuffled = list(queue)
    rnd.shuffle(shuffled)
    assert sorted(queue, key=lambda a: a.key) == sorted(shuffled, key=lambda a: a.key)
    keys = [a.key for a in queue]
    assert len(set(keys)) == len(keys), "distinct actions never tie"


@given(items)
def test_overdue_means_still_to_do_and_past_due(item: Item) -> None:
    expected = item.is_open and item.due_at is not None and item.due_at < NOW
    assert is_overdue(item.status, item.due_at, NOW) == expected


def test_unknown_value_at_risk_sorts_as_infinity_and_closed_work_is_never_overdue() -> None:
    unknown = Item("a", "open", "service", None, None)
    assert unknown.key[1] == math.inf
    assert is_overdue("done", NOW - timedelta(days=1), NOW) is False
    assert is_overdue("cancelled", NOW - timedelta(days=1), NOW) is False
    assert is_overdue("acked", NOW - timedelta(seconds=1), NOW) is True
    assert is_overdue("open", None, NOW) is False
