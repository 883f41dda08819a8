"""The classifier's use cases through the bootstrap, on the in-memory unit of work (tests/fakes):
what a batch of events, the review scheduler and the population sweep store and publish.
The same use cases run on real PostgreSQL and Tansu in tests/integration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.fakes import FakeDatabase, FakeUnitOfWork
from tierflow_classifier.adapters.clock import Clock, EventTimeClock, WallClock
from tierflow_classifier.adapters.population_store import SweepProgress
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.bootstrap import Wiring, wire
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.model import EventMeta, Purchase
from tierflow_classifier.domain.population import PopulationStats
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.consumer import BatchOutcome, Record
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.settings import TopicSettings

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "classifier.yaml")
TOPICS = TopicSettings()
DAY = timedelta(days=1)


def wired(db: FakeDatabase, clock: Clock | None = None) -> Wiring:
    return wire(
        rules=RULES,
        clock=clock or WallClock(),
        topics=TOPICS,
        settings=ClassifierSettings(),
        unit_of_work=lambda: FakeUnitOfWork(db),
        joining=lambda _conn: FakeUnitOfWork(db, joined=True),
        # The population rebuild reads PostgreSQL; these tests hand the sweep its statistics.
        engine=cast(AsyncEngine, None),
    )


def record(event: EmittedEvent, offset: int, partition: int = 0) -> Record:
    rec = encode_event(event)
    return ConsumerRecord(
        topic=TOPICS.customer_events,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=rec.key,
        value=rec.value,
        checksum=None,
        serialized_key_size=len(rec.key),
        serialized_value_size=len(rec.value),
        headers=tuple(rec.headers),
    )


def event(event_id: str, customer: str, type_: str, time: datetime, **data: Any) -> EmittedEvent:
    return EmittedEvent(
        id=event_id, type=type_, source="shop", subject=customer, time=time, data=data
    )


def purchase(event_id: str, customer: str, amount: str, time: datetime) -> EmittedEvent:
    return event(
        event_id, customer, "purchase", time, order_id=event_id, amount=amount, currency="USD"
    )


async def consume(wiring: Wiring, db: FakeDatabase, records: list[Record]) -> BatchOutcome:
    """What the stateful consumer does around the handler: one transaction, outbox written."""
    outcome = await wiring.handler(cast(AsyncConnection, None), records)
    db.outbox.extend(outcome.emit)
    return outcome


def tier_changes(db: FakeDatabase) -> list[tuple[str, dict[str, Any]]]:
    return [
        (item.subject, item.data)
        for topic, item in db.outbox
        if topic == TOPICS.tier_changed and isinstance(item, EmittedEvent)
    ]


async def test_a_first_purchase_stores_the_customer_and_announces_its_tier_once() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    now = datetime.now(UTC)
    batch = [record(purchase("o-1", "c-1", "120.00", now - timedelta(hours=1)), 0)]
    outcome = await consume(wiring, db, batch)
    assert outcome.applied == 1
    assert not outcome.dead
    state = db.customers["c-1"]
    assert state.purchases_lifetime == 1
    assert [(cid, d["to"]) for cid, d in tier_changes(db)] == [("c-1", "regular")]
    # Redelivered (the consumer crashed before committing its offsets): nothing twice.
    again = await consume(wiring, db, batch)
    assert again.applied == 0
    assert again.duplicates == 1
    assert db.customers["c-1"].purchases_lifetime == 1
    assert len(tier_changes(db)) == 1


async def test_a_customers_events_in_one_batch_apply_in_order_and_each_customer_is_locked() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    t = datetime.now(UTC) - timedelta(hours=3)
    batch = [
        record(purchase("o-1", "c-1", "10.00", t), 0),
        record(purchase("o-2", "c-2", "10.00", t), 1),
        record(purchase("o-3", "c-1", "25.00", t + timedelta(minutes=5)), 2),
        record(purchase("o-3", "c-1", "25.00", t + timedelta(minutes=5)), 3),  # in-batch repeat
    ]
    outcome = await consume(wiring, db, batch)
    assert (outcome.applied, outcome.duplicates) == (3, 1)
    assert db.customers["c-1"].purchases_lifetime == 2
    assert str(db.customers["c-1"].net_spend_lifetime) == "35.00"
    assert db.locked == [["c-1", "c-2"]]


async def test_an_event_the_rules_cannot_apply_is_dead_lettered_and_can_be_resent_fixed() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    t = datetime.now(UTC) - timedelta(hours=2)
    bad = event("o-9", "c-9", "purchase", t, order_id="o-9", amount="5", currency="XXX")
    outcome = await consume(wiring, db, [record(bad, 0)])
    assert outcome.applied == 0
    assert [(d.field, d.record.offset) for d in outcome.dead] == [("data.currency", 0)]
    assert "c-9" not in db.customers
    assert ("shop", "o-9") not in db.ledger  # released: a fixed resend will apply
    fixed = event("o-9", "c-9", "purchase", t, order_id="o-9", amount="5", currency="USD")
    assert (await consume(wiring, db, [record(fixed, 1)])).applied == 1


async def test_a_poison_record_is_dead_lettered_without_touching_the_rest() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    t = datetime.now(UTC) - timedelta(hours=2)
    good = record(purchase("o-1", "c-1", "10.00", t), 0)
    poison = record(event("o-2", "c-2", "purchase", t, order_id="o-2", currency="USD"), 1)
    outcome = await consume(wiring, db, [good, poison])
    assert outcome.applied == 1
    assert [d.field for d in outcome.dead] == ["data.amount"]
    assert set(db.customers) == {"c-1"}


async def test_the_scheduler_fires_a_deadline_at_its_own_instant() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    onboarding = timedelta(days=float(RULES.params.get("onboarding_days", 30)))
    bought_at = datetime.now(UTC) - onboarding - timedelta(hours=1)
    meta = EventMeta("shop", "o-1", "c-1", bought_at)
    # Judged when it happened, and not since: its onboarding ended an hour ago.
    db.customers["c-1"], _ = apply(
        None, Purchase(meta, "o-1", Decimal("10"), "USD"), RULES, at=bought_at
    )
    due_at = db.customers["c-1"].next_review_at
    assert due_at is not None
    assert due_at <= datetime.now(UTC)
    assert db.customers["c-1"].dimensions["lifecycle"].label == "new"
    handled = await wiring.scheduler.tick()
    assert handled == 1
    fired = [c for c in db.history.values() if c.cause == f"time:{due_at.isoformat()}"]
    assert [(c.dimension, c.from_label, c.effective_at) for c in fired] == [
        ("lifecycle", "new", due_at)
    ]
    assert db.customers["c-1"].dimensions["lifecycle"].label == fired[0].to.label
    assert db.commits == 1
    assert await wiring.scheduler.tick() == 0  # nothing due any more


async def test_on_the_replay_clock_events_are_judged_at_their_own_time_and_move_the_watermark() -> (
    None
):
    db = FakeDatabase()
    wiring = wired(db, EventTimeClock())
    t = datetime(1997, 3, 1, 12, tzinfo=UTC)
    await consume(
        wiring,
        db,
        [
            record(purchase("o-1", "c-1", "10.00", t), 0),
            record(purchase("o-2", "c-2", "9", t), 1, 1),
        ],
    )
    assert db.customers["c-1"].dimensions["value_tier"].since == t
    assert set(db.watermarks.values()) == {t}


async def test_the_population_sweep_rescores_customers_against_new_statistics() -> None:
    db = FakeDatabase()
    wiring = wired(db)
    t = datetime.now(UTC) - timedelta(days=2)
    big, small = "c-big", "c-small"
    await consume(
        wiring,
        db,
        [
            record(purchase("o-1", big, "900.00", t), 0),
            record(purchase("o-2", small, "5.00", t), 1),
        ],
    )
    assert db.customers[big].dimensions["abc"].label == "unscored"
    stats = PopulationStats(
        version=1,
        computed_at=datetime.now(UTC),
        customers=2,
        recency_cuts=(1.0, 3.0, 10.0, 30.0),
        frequency_cuts=(1.0, 1.0, 1.0, 1.0),
        monetary_cuts=(5.0, 10.0, 100.0, 500.0),
        abc_a_min_spend=500.0,
        abc_b_min_spend=50.0,
    )
    wiring.classifier.population.stats = stats
    assert await wiring.refresher.sweep(stats, SweepProgress(1))
    assert db.customers[big].dimensions["abc"].label == "A"
    assert db.customers[small].dimensions["abc"].label == "C"
    causes = {c.cause for c in db.history.values() if c.customer_id == big}
    assert "population:1" in causes
    assert db.sweep == SweepProgress(1, small, True)
