"""Caps and quiet hours hold under a burst of 10,000 triggering changes: one contact-pressure
ledger across playbooks and channels, escalations never suppressed, every suppression recorded
with its reason, customer-facing actions in a customer's quiet hours wait for them to end."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.integration.helpers import eventually
from tests.notifier_support import (
    Harness,
    WebhookReceiver,
    change_event,
    customer_event,
    playbook_text,
    start_harness,
    write_playbook,
)
from tests.support import unique
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration
CUSTOMERS = 500
PER_CUSTOMER = 20
QUIET_ZONE = "Asia/Tokyo"  # UTC+9 all year: inside the quiet window chosen below


def quiet_window() -> tuple[str, str]:
    """Quiet hours that contain Tokyo's "now" but not UTC's: [now+6h, now+12h) UTC o'clock."""
    now = datetime.now(UTC)
    start, end = now + timedelta(hours=6), now + timedelta(hours=12)
    return start.strftime("%H:%M"), end.strftime("%H:%M")


@pytest.fixture
def window() -> tuple[str, str]:
    return quiet_window()


@pytest.fixture
async def harness(
    window: tuple[str, str],
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    playbook = playbook_text(quiet=window, cadence="7d", first_purchase="7d")
    async with AsyncExitStack() as stack:
        yield await start_harness(
            stack,
            kafka=kafka_settings,
            database=database,
            topics=topics,
            playbook=write_playbook(tmp_path / "p.yaml", playbook),
            receivers={"crm": WebhookReceiver()},
        )


def burst(tag: str) -> list[Any]:
    events = []
    for i in range(PER_CUSTOMER):
        for c in range(CUSTOMERS):
            cid = f"{tag}-{c}"
            if i % 3 == 0:
                events.append(change_event(f"{cid}-{i}", cid, "lifecycle", "active", "at_risk"))
            elif i % 3 == 1:
                events.append(change_event(f"{cid}-{i}", cid, "churn_risk", "low", "high"))
            else:
                events.append(change_event(f"{cid}-{i}", cid, "problem", "none", "escalated"))
    return events


async def test_caps_and_quiet_hours_hold_under_a_burst_of_10000_changes(
    harness: Harness, window: tuple[str, str]
) -> None:
    tag = unique("b")
    zone = {f"{tag}-{c}": ("UTC" if c % 2 == 0 else QUIET_ZONE) for c in range(CUSTOMERS)}
    await harness.customer_events(
        [customer_event(f"p-{cid}", cid, "profile", {"timezone": tz}) for cid, tz in zone.items()]
    )
    await eventually(
        lambda: harness.scalar(
            "SELECT count(*) FROM notifier_contacts WHERE customer_id LIKE :t", t=f"{tag}-%"
        ),
        lambda n: n == CUSTOMERS,
    )
    started = time.monotonic()
    await harness.changes(burst(tag))
    await eventually(
        lambda: harness.scalar(
            "SELECT count(*) FROM care_actions WHERE customer_id LIKE :t", t=f"{tag}-%"
        ),
        lambda n: n == CUSTOMERS * PER_CUSTOMER,
        timeout=90,
    )
    elapsed = time.monotonic() - started
    rows = await harness.rows("customer_id LIKE :t", t=f"{tag}-%")
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per[r["customer_id"]].append(r)
    start, end = (datetime.strptime(t, "%H:%M").time() for t in window)
    for cid, actions in per.items():
        opened = [a for a in actions if a["status"] == "open"]
        coupons = [a for a in opened if a["kind"] == "coupon"]
        messages = [a for a in opened if a["kind"] in ("coupon", "care_message")]
        assert len(coupons) == 1, cid
        assert len(messages) == 3, cid
        escalations = [a for a in actions if a["kind"] == "escalation"]
        assert len(escalations) == 6
        assert all(a["status"] == "open" for a in escalations)
        for a in actions:
            if a["status"] == "suppressed":
                assert a["suppressed_reason"] in ("cap:coupon-per-30d", "cap:messages-per-week")
        for a in messages:
            local = a["deliver_at"].astimezone(ZoneInfo(zone[cid])).time()
            in_quiet = local >= start or local < end if start > end else start <= local < end
            assert not in_quiet, (cid, a["deliver_at"])
            deferred = a["deliver_at"] - a["created_at"] > timedelta(minutes=30)
            assert deferred == (zone[cid] == QUIET_ZONE), (cid, a["deliver_at"])
    # Everything due now reaches the receiver, once; deferred messages wait for their time.
    now = datetime.now(UTC)
    due = {r["action_id"] for r in rows if r["status"] == "open" and r["deliver_at"] <= now}
    receiver = harness.receivers["crm"]

    async def received() -> set[str]:
        return receiver.ids()

    await eventually(received, lambda ids: ids >= due, timeout=60)
    assert receiver.ids() == due
    assert receiver.duplicates() == 0
    assert receiver.bad_signatures == 0
    print(f"burst: {len(rows)} actions decided in {elapsed:.1f}s")
