"""Two notifier processes in one consumer group (as `tierflow run --notifiers 2` starts them),
the second joining mid-stream and the first stopping mid-stream: every trigger gets its
action once, the contact-pressure caps hold across the two, every deliverable action reaches
the webhook once and no care action is published twice."""

from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import eventually
from tests.notifier_support import (
    Harness,
    WebhookReceiver,
    change_event,
    playbook_text,
    start_harness,
    write_playbook,
)
from tests.support import read_to_end, unique
from tierflow_common.contract import EmittedEvent
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration
CUSTOMERS = 150


def changes(customers: range) -> list[EmittedEvent]:
    """Per customer, five changes that each trigger one rule; the second coupon within 30 days
    is suppressed by the cap."""
    out: list[EmittedEvent] = []
    for c in customers:
        cid = f"g-{c:03d}"
        out += [
            change_event(f"{cid}-1", cid, "value_tier", "important", "VIP"),
            change_event(f"{cid}-2", cid, "lifecycle", "active", "at_risk"),
            change_event(f"{cid}-3", cid, "value_tier", "VIP", "important"),
            change_event(f"{cid}-4", cid, "lifecycle", "active", "at_risk"),
            change_event(f"{cid}-5", cid, "problem", "open_complaint", "escalated"),
        ]
    return out


async def test_two_notifier_processes_share_the_stream_without_doubling_anything(
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> None:
    receiver = WebhookReceiver()
    await receiver.start()  # ours: it outlives the first notifier (which would stop its own)
    playbook = write_playbook(tmp_path / "p.yaml", playbook_text(cadence="30d"))
    group, events_group = unique("notifier"), unique("notifier_events")

    async def start(stack: AsyncExitStack) -> Harness:
        return await start_harness(
            stack,
            kafka=kafka_settings,
            database=database,
            topics=topics,
            playbook=playbook,
            receivers={"crm": receiver},
            group_id=group,
            events_group_id=events_group,
        )

    stream = changes(range(CUSTOMERS))
    redelivered = stream[: len(stream) // 5]  # an upstream resend: the same change ids
    third = len(stream) // 3
    async with AsyncExitStack() as second_stack:
        second_stack.push_async_callback(receiver.stop)
        async with AsyncExitStack() as first_stack:
            first = await start(first_stack)
            await first.changes(stream[:third])
            second = await start(second_stack)  # rebalance: joins mid-stream
            await first.changes(stream[third : 2 * third])
            await eventually(
                lambda: first.scalar("SELECT count(*) FROM care_actions"),
                lambda n: n >= third,
                timeout=60,
            )
        # The first one stopped (rebalance again); the second carries on alone.
        await second.changes([*stream[2 * third :], *redelivered])
        total = len(stream)
        await eventually(
            lambda: second.scalar("SELECT count(*) FROM care_actions"),
            lambda n: n >= total,
            timeout=60,
        )
        rows = await second.rows()
        deliverable = {r["action_id"] for r in rows if r["status"] == "open"}

        async def received() -> set[str]:
            return receiver.ids()

        await eventually(received, lambda ids: ids >= deliverable, timeout=60)
        await eventually(
            lambda: second.scalar("SELECT count(*) FROM outbox"), lambda n: n == 0, timeout=30
        )
        published = await read_to_end(kafka_settings, topics.care_actions)

    # One action per (trigger, rule): exactly one per change here, none for a resend.
    assert len(rows) == total
    triggers = Counter(r["trigger_event_id"] for r in rows)
    assert set(triggers) == {e.id for e in stream}
    assert set(triggers.values()) == {1}
    # The caps held across the two processes: one coupon per customer, the other suppressed.
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per[r["customer_id"]].append(r)
    for cid, actions in per.items():
        coupons = [a for a in actions if a["kind"] == "coupon"]
        assert sorted(a["status"] for a in coupons) == ["open", "suppressed"], cid
    # Every deliverable action reached the webhook once; none was published twice.
    assert receiver.ids() == deliverable
    assert receiver.duplicates() == 0
    ids = Counter(r["id"] for r in published)
    assert deliverable <= set(ids) <= {r["action_id"] for r in rows}
    assert set(ids.values()) == {1}
