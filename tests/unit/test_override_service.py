"""A manual override through the bootstrap on the in-memory unit of work (tests/fakes): asked for
(service_layer/overrides.py), published as a customer event, applied by the consumer's handler
in order with the customer's events, and ended at its expiry by the review scheduler. On the
event-time clock, so the test moves time with events instead of waiting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from tests.fakes import FakeDatabase
from tests.unit.test_reclassify_service import (
    ROOT,
    RULES,
    TOPICS,
    consume,
    purchase,
    record,
    wired,
)
from tierflow_classifier.adapters.clock import EventTimeClock
from tierflow_classifier.service_layer.overrides import OverrideRejected, request_override
from tierflow_common.contract import EmittedEvent, encode_event

T = datetime(2026, 3, 2, 9, tzinfo=UTC)


class Captured:
    """A publisher that keeps what it was given (the broker's part is tested in integration)."""

    def __init__(self) -> None:
        self.events: list[EmittedEvent] = []

    async def publish(self, event: EmittedEvent) -> None:
        self.events.append(event)


def published(db: FakeDatabase) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(cause, [(dimension, from, to)]) of every classification-changed record of c-1."""
    return [
        (item.data["cause"], [(c["dimension"], c["from"], c["to"]) for c in item.data["changes"]])
        for topic, item in db.outbox
        if topic == TOPICS.classification_changed
        and isinstance(item, EmittedEvent)
        and item.subject == "c-1"
    ]


async def test_an_override_is_applied_from_the_topic_and_expires_by_itself() -> None:
    db = FakeDatabase()
    wiring = wired(db, EventTimeClock())
    await consume(wiring, db, [record(purchase("o-1", "c-1", "40", T), 0)])
    assert db.customers["c-1"].dimensions["value_tier"].label == "regular"

    publisher = Captured()
    at, until = T + timedelta(hours=1), T + timedelta(days=5)
    asked = await request_override(
        publisher,
        wiring.classifier.rules,
        customer_id="c-1",
        dimension="value_tier",
        label="VIP",
        reason="key account",
        expires_at=until,
        by="ops key",
        now=at,
    )
    [event] = publisher.events
    assert (event.id, event.subject, event.type) == (
        asked.event_id,
        "c-1",
        "classification.override",
    )
    outcome = await consume(wiring, db, [record(event, 1)])
    assert (outcome.applied, outcome.dead) == (1, [])

    tier = db.customers["c-1"].dimensions["value_tier"]
    assert (tier.label, tier.reason) == ("VIP", "override")
    assert tier.explanation["override"]["override_id"] == asked.override_id
    assert tier.explanation["override"]["by"] == "ops key"
    cause = f"override:{asked.override_id}"
    assert (cause, [("value_tier", "regular", "VIP")]) in published(db)
    # Redelivered: applied once.
    assert (await consume(wiring, db, [record(event, 1)])).duplicates == 1

    # Another customer's event on the partition moves the event-time clock past the expiry.
    await consume(wiring, db, [record(purchase("o-2", "c-2", "10", until + timedelta(days=1)), 2)])
    assert db.customers["c-1"].dimensions["value_tier"].label == "VIP"  # not judged yet
    assert await wiring.scheduler.tick() >= 1
    back = db.customers["c-1"].dimensions["value_tier"]
    assert (back.label, back.reason == "override") == ("regular", False)
    expired = [c for c in db.history.values() if c.cause == f"override_expired:{asked.override_id}"]
    assert [(c.from_label, c.to.label, c.effective_at) for c in expired] == [
        ("VIP", "regular", until)
    ]
    assert (f"override_expired:{asked.override_id}", [("value_tier", "VIP", "regular")]) in (
        published(db)
    )


async def test_a_clearing_ends_the_override_at_once() -> None:
    db = FakeDatabase()
    wiring = wired(db, EventTimeClock())
    await consume(wiring, db, [record(purchase("o-1", "c-1", "40", T), 0)])
    publisher = Captured()
    for n, label in enumerate(["VIP", None]):
        await request_override(
            publisher,
            RULES,
            customer_id="c-1",
            dimension="value_tier",
            label=label,
            reason="cleared" if label is None else "key account",
            expires_at=None,
            by="ops key",
            now=T + timedelta(hours=1 + n),
        )
    first, clearing = publisher.events
    await consume(wiring, db, [record(first, 1), record(clearing, 2)])
    assert db.customers["c-1"].dimensions["value_tier"].label == "regular"
    causes = [cause for cause, _ in published(db)]
    override_id = first.data["override_id"]
    assert causes[-2:] == [f"override:{override_id}", f"override_cleared:{override_id}"]


@pytest.mark.parametrize(
    ("dimension", "label", "expires", "field"),
    [
        ("tier", "VIP", None, "dimension"),
        ("value_tier", "gold", None, "label"),
        ("value_tier", "VIP", T - timedelta(seconds=1), "expires_at"),
    ],
)
async def test_an_override_the_rules_cannot_take_is_refused_before_it_is_published(
    dimension: str, label: str, expires: datetime | None, field: str
) -> None:
    publisher = Captured()
    with pytest.raises(OverrideRejected) as caught:
        await request_override(
            publisher,
            RULES,
            customer_id="c-1",
            dimension=dimension,
            label=label,
            reason="r",
            expires_at=expires,
            by="k",
            now=T,
        )
    assert caught.value.field == field
    assert publisher.events == []


async def test_the_published_override_is_a_cloudevent_matching_the_published_schema() -> None:
    """Read back with the CloudEvents SDK and checked with jsonschema against
    docs/schemas (implementations we did not write)."""
    publisher = Captured()
    await request_override(
        publisher,
        RULES,
        customer_id="c-1",
        dimension="value_tier",
        label="VIP",
        reason="key account",
        expires_at=T + timedelta(days=1),
        by="ops key",
        now=T,
    )
    record = encode_event(publisher.events[0])
    event = from_binary(
        KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
        JSONFormat(),
    )
    assert event.get_type() == "classification.override"
    assert event.get_subject() == "c-1"
    assert record.key == b"c-1"  # the customer's partition, as the ingest's records
    schema = json.loads(
        (ROOT / "docs/schemas/classification-override.data.schema.json").read_text()
    )
    data = event.get_data()
    assert isinstance(data, dict)
    Draft202012Validator(schema).validate(data)
    assert data["override_id"].startswith("ovr-")
    assert datetime.fromisoformat(data["expires_at"]) == T + timedelta(days=1)
