"""The notifier against the real broker and PostgreSQL: one care action per (trigger, rule),
however often the trigger is delivered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.access import app_client
from tests.integration.helpers import eventually, produce
from tests.support import ROOT, read_topic, unique
from tierflow_common.contract import CLASSIFICATION_CHANGED_TYPE, EmittedEvent
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_notifier.bootstrap import create_app
from tierflow_notifier.settings import NotifierSettings

pytestmark = pytest.mark.integration


def change(event_id: str, customer: str, from_label: str | None, to_label: str) -> EmittedEvent:
    return EmittedEvent(
        id=event_id,
        type=CLASSIFICATION_CHANGED_TYPE,
        source="tierflow/classifier",
        subject=customer,
        time=datetime(2025, 6, 1, tzinfo=UTC),
        data={
            "customer_id": customer,
            "dimension": "value_tier",
            "from": from_label,
            "to": to_label,
            "reason": "test",
            "explanation": {},
            "cause": "event:shop/1",
            "effective_at": "2025-06-01T00:00:00Z",
            "rule_set_version": "t",
        },
    )


@pytest.fixture
async def notifier(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=NotifierSettings(
            playbooks_file=ROOT / "config" / "notifier.yaml",
            group_id=unique("notifier"),
            events_group_id=unique("notifier_events"),
        ),
    )
    async with app_client(app, database, base_url="http://notifier") as client:
        yield client


async def test_each_trigger_creates_its_actions_exactly_once(
    notifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    vip = change("chg-1", "dora", "important", "VIP")
    down = change("chg-2", "dora", "VIP", "important")
    poison = (
        b"dora",
        b"{}",
        [("ce_specversion", b"1.0"), ("ce_id", b"z"), ("ce_source", b"s"), ("ce_type", b"t")],
    )
    await produce(kafka_settings, topics.classification_changed, [vip, vip, down, poison, down])

    async def actions() -> list[dict[str, object]]:
        # Only the change-triggered ones: the changes are dated 2025, so the shipped playbook's
        # quarterly cadence for `important` is long due and fires too (once, by schedule).
        resp = await notifier.get("/v1/actions", params={"customer": "dora"})
        items: list[dict[str, object]] = resp.json()["items"]
        return [i for i in items if i["trigger_event_id"] in ("chg-1", "chg-2")]

    items = await eventually(actions, lambda a: len(a) >= 3)
    assert sorted(str(a["rule_id"]) for a in items) == [
        "downgrade-winback",
        "important-care-revisit",
        "vip-account-manager",
    ]
    published = await read_topic(kafka_settings, topics.care_actions, expect=3)
    assert {p["event"]["id"] for p in published} >= {str(a["action_id"]) for a in items}
    (dead,) = await read_topic(kafka_settings, topics.notifier_dlq, expect=1)
    assert dead["headers"]["dlq_field"].startswith(b"data.")
    # Both redeliveries were consumed and committed: their 3 would-be actions counted as
    # duplicates, and still exactly three actions exist.
    await eventually(
        lambda: notifier.get("/metrics"),
        lambda r: _metric(r.text, "duplicate") >= 3.0,
    )
    assert len(await actions()) == 3


def _metric(text: str, outcome: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("tierflow_consumer_records_total{")
            and f'outcome="{outcome}"' in line
            and 'group="notifier_' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total
