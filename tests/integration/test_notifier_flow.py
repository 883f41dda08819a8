"""Every trigger kind and action type end to end on the real broker and PostgreSQL, delivered
to a real local webhook receiver that verifies Standard Webhooks signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from tests.support import read_topic, unique
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
async def harness(
    stack: AsyncExitStack,
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> Harness:
    # The birthday rule fires a few seconds from now, so the test can watch it fire.
    birthday_at = (datetime.now(UTC) + timedelta(seconds=8)).strftime("%H:%M:%S")
    playbook = write_playbook(tmp_path / "p.yaml", playbook_text(birthday_at=birthday_at))
    receiver = WebhookReceiver()
    return await start_harness(
        stack,
        kafka=kafka_settings,
        database=database,
        topics=topics,
        playbook=playbook,
        receivers={"crm": receiver},
        ingest=receiver,
    )


def _lag(row: dict[str, Any]) -> float:
    scheduled = datetime.fromisoformat(row["explanation"]["scheduled_for"])
    return float((row["created_at"] - scheduled).total_seconds())


async def test_change_triggers_create_each_action_once_and_deliver_signed(
    harness: Harness,
) -> None:
    c = unique("cust")
    await harness.customer_events(
        [
            customer_event(
                "p1",
                c,
                "profile",
                {
                    "timezone": "UTC",
                    "preferred_channel": "sms",
                    "consent": {"marketing": True, "channels": {"sms": False}},
                },
            )
        ]
    )
    await eventually(
        lambda: harness.scalar(
            "SELECT count(*) FROM notifier_contacts WHERE customer_id = :c", c=c
        ),
        lambda n: n == 1,
    )
    vip = change_event("chg-vip", c, "value_tier", "important", "VIP")
    changes = [
        vip,
        vip,  # redelivered
        change_event("chg-risk", c, "lifecycle", "active", "at_risk"),
        change_event("chg-churn", c, "churn_risk", "low", "high"),
        change_event("chg-problem", c, "problem", "open_complaint", "escalated"),
    ]
    await harness.changes(changes)
    receiver = harness.receivers["crm"]
    rows = await eventually(
        lambda: harness.rows("customer_id = :c AND rule_id NOT LIKE 'vip-cadence%'", c=c),
        lambda r: len(r) >= 4,
    )
    by_rule = {r["rule_id"]: r for r in rows}
    assert set(by_rule) == {
        "vip-account-manager",
        "at-risk-coupon",
        "churn-care-message",
        "problem-escalation",
    }
    # Coupon value by the tier the notifier saw; channel = preference unless refused (sms is).
    coupon = by_rule["at-risk-coupon"]["details"]["coupon"]
    assert (coupon["value"], coupon["currency"]) == ("50.00", "USD")
    assert by_rule["churn-care-message"]["channel"] == "email"
    assert by_rule["problem-escalation"]["priority_class"] == "critical"
    assert by_rule["vip-account-manager"]["owner"] == "queue:am"
    assert all(r["due_at"] >= r["deliver_at"] for r in rows)

    await eventually(lambda: _ids(receiver), lambda ids: ids >= {r["action_id"] for r in rows})
    assert receiver.bad_signatures == 0
    got = receiver.accepted[by_rule["problem-escalation"]["action_id"]][0]
    assert got.body["type"] == "tierflow.care_action.created"
    assert got.body["data"]["reason"].startswith("problem: open_complaint → escalated")
    assert got.headers["webhook-id"] == by_rule["problem-escalation"]["action_id"]
    published = await read_topic(harness.kafka, harness.topics.care_actions, expect=4)
    assert {p["event"]["id"] for p in published} >= {r["action_id"] for r in rows}


async def _ids(receiver: WebhookReceiver) -> set[str]:
    return receiver.ids()


async def test_every_schedule_kind_fires_within_a_second_of_due(harness: Harness) -> None:
    c = unique("cust")
    now = datetime.now(UTC)
    birthday = (now + timedelta(seconds=8)).date().replace(year=1992)
    await harness.customer_events(
        [
            customer_event("p1", c, "profile", {"birthday": birthday.isoformat()}),
            customer_event(
                "o1", c, "purchase", {"order_id": "1", "amount": "10", "currency": "USD"}
            ),
            customer_event("cmp-a", c, "interaction", {"kind": "complaint", "complaint_id": "A"}),
            customer_event("cmp-b", c, "interaction", {"kind": "complaint", "complaint_id": "B"}),
        ]
    )
    await harness.changes([change_event("chg-vip", c, "value_tier", "important", "VIP")])

    def fired(rule: str, n: int = 1) -> Any:
        return eventually(
            lambda: harness.rows("customer_id = :c AND rule_id = :r", c=c, r=rule),
            lambda r: len(r) >= n,
            timeout=20,
        )

    follow_up = (await fired("first-purchase-follow-up"))[0]
    supervisor = await fired("complaint-supervisor", 2)
    assert {r["details"]["complaint_id"] for r in supervisor} == {"A", "B"}
    # Resolving B before the manager deadline cancels B's pending escalation.
    await harness.customer_events(
        [
            customer_event(
                "res-b", c, "interaction", {"kind": "complaint_resolved", "complaint_id": "B"}
            )
        ]
    )
    await eventually(
        lambda: harness.scalar(
            "SELECT count(*) FROM notifier_schedules WHERE customer_id = :c AND ref = 'B'", c=c
        ),
        lambda n: n == 0,
    )
    manager = await fired("complaint-manager")
    cadence = await fired("vip-cadence-revisit", 2)
    birthday_row = (await fired("birthday-care"))[0]
    assert [r["details"]["complaint_id"] for r in manager] == ["A"]
    for row in [follow_up, *supervisor, *manager, *cadence, birthday_row]:
        assert _lag(row) < 1.0, (row["rule_id"], _lag(row))
    assert sorted(r["explanation"]["period"] for r in cadence)[:2] == [1, 2]
    assert birthday_row["kind"] == "care_message"

    # Leaving VIP ends the cadence: its schedule row is gone.
    await harness.changes([change_event("chg-down", c, "value_tier", "VIP", "important")])
    await eventually(
        lambda: harness.scalar(
            "SELECT count(*) FROM notifier_schedules WHERE customer_id = :c "
            "AND rule_id = 'vip-cadence-revisit'",
            c=c,
        ),
        lambda n: n == 0,
    )
    delivered = await eventually(
        lambda: _ids(harness.receivers["crm"]),
        lambda ids: follow_up["action_id"] in ids and birthday_row["action_id"] in ids,
    )
    assert {r["action_id"] for r in manager} <= delivered


async def test_tasks_close_the_loop_through_the_ingest_api(harness: Harness) -> None:
    c = unique("cust")
    await harness.customer_events(
        [customer_event("cmp", c, "interaction", {"kind": "complaint", "complaint_id": "T-1"})]
    )
    await harness.changes([change_event("chg-down", c, "value_tier", "VIP", "important")])
    rows = await eventually(
        lambda: harness.rows(
            "customer_id = :c AND rule_id IN ('downgrade-revisit', 'complaint-supervisor')", c=c
        ),
        lambda r: len(r) == 2,
    )
    revisit = next(r for r in rows if r["kind"] == "revisit")
    escalation = next(r for r in rows if r["kind"] == "escalation")
    api = harness.client

    page = (await api.get("/v1/actions", params={"owner": "queue:care", "customer": c})).json()
    assert [i["action_id"] for i in page["items"]] == [revisit["action_id"]]
    first = await api.get("/v1/actions", params={"customer": c, "status": "open", "limit": 1})
    second = await api.get(
        "/v1/actions", params={"customer": c, "status": "open", "after": first.json()["next"]}
    )
    assert len(first.json()["items"]) == len(second.json()["items"]) == 1

    assert (await api.post(f"/v1/actions/{revisit['action_id']}/ack")).json()["status"] == "acked"
    done = await api.post(f"/v1/actions/{revisit['action_id']}/complete", json={"outcome": "done"})
    assert done.json()["status"] == "done"
    assert done.json()["reported"] is True
    again = await api.post(f"/v1/actions/{revisit['action_id']}/complete", json={"outcome": "done"})
    assert again.json()["reported"] is False
    other = await api.post(f"/v1/actions/{revisit['action_id']}/complete", json={"outcome": "x"})
    assert other.status_code == 409
    resolved = await api.post(
        f"/v1/actions/{escalation['action_id']}/complete", json={"outcome": "resolved"}
    )
    assert resolved.json()["reported"] is True
    assert (await api.post("/v1/actions/nope/ack")).status_code == 404

    receiver = harness.receivers["crm"]
    events = await eventually(lambda: _ingested(receiver, c), lambda e: len(e) >= 2)
    by_kind = {e["data"]["kind"]: e for e in events}
    assert by_kind["revisit_done"]["id"] == f"care-action-{revisit['action_id']}-revisit_done"
    assert by_kind["revisit_done"]["source"] == "tierflow/notifier"
    assert by_kind["complaint_resolved"]["data"]["complaint_id"] == "T-1"
    assert len(events) == 2  # the repeated completion queued nothing


async def _ingested(receiver: WebhookReceiver, customer: str) -> list[dict[str, Any]]:
    return [e for e in receiver.ingest_events if e["subject"] == customer]
