"""The notifier's array-parameter statements on real PostgreSQL: labels merge, schedules merge
as each policy says, cadences end, contacts read back decoded; the events handler schedules a
customer's follow-up from their earliest purchase, whatever order purchases come in, and a
customer known to have bought earlier writes nothing; an erasure makes the id new again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import ROOT, unique
from tierflow_common.consumer import Record
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings
from tierflow_notifier.adapters import projection
from tierflow_notifier.adapters.changes import Erasure
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.playbooks import FirstPurchaseTrigger
from tierflow_notifier.domain.schedules import ScheduleEntry, first_purchase_entry
from tierflow_notifier.service_layer.erasure import erase_customer
from tierflow_notifier.service_layer.events import EventsHandler, KnownBuyers

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PLAYBOOK = load_playbook(ROOT / "config" / "notifier.yaml")


@pytest.fixture
async def engine(database: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database)
    yield engine
    await engine.dispose()


def entry(
    customer: str, anchor: datetime, *, sid: str = "s-1", ref: str | None = "VIP"
) -> ScheduleEntry:
    return ScheduleEntry(
        schedule_id=sid,
        rule_id="r",
        customer_id=customer,
        due_at=anchor + timedelta(days=30),
        anchor_at=anchor,
        period=1,
        ref=ref,
    )


async def anchors(engine: AsyncEngine) -> dict[str, datetime]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT schedule_id, anchor_at FROM notifier_schedules"))
        return {r.schedule_id: r.anchor_at for r in rows}


async def test_schedules_merge_as_each_policy_says(engine: AsyncEngine) -> None:
    c = unique("c")
    later, earlier = T0 + timedelta(days=1), T0 - timedelta(days=1)
    async with engine.begin() as conn:
        await projection.upsert_schedules(conn, [entry(c, T0)], "newer")
    for merge, anchor, expected in [
        ("newer", earlier, T0),
        ("newer", later, later),
        ("earlier", later + timedelta(days=1), later),
        ("earlier", earlier, earlier),
        ("keep", later, earlier),
        ("replace", later, later),
    ]:
        async with engine.begin() as conn:
            await projection.upsert_schedules(conn, [entry(c, anchor)], merge)  # type: ignore[arg-type]
        assert (await anchors(engine))["s-1"] == expected, merge
    # Ending a cadence drops only the entries of that (customer, rule, label).
    async with engine.begin() as conn:
        await projection.upsert_schedules(conn, [entry(c, T0, sid="s-2", ref="important")], "keep")
        await projection.end_cadences(
            conn, [(c, "r", "VIP"), (c, "r", "VIP"), ("nobody", "r", "VIP")]
        )
    assert set(await anchors(engine)) == {"s-2"}
    async with engine.begin() as conn:
        await projection.delete_schedules(conn, ["s-2"])
    assert await anchors(engine) == {}


async def test_a_batch_of_changes_projects_labels_and_cadences_in_one_statement(
    engine: AsyncEngine,
) -> None:
    c = unique("c")
    async with engine.begin() as conn:
        await projection.upsert_schedules(conn, [entry(c, T0, sid="vip")], "keep")
        await projection.project_changes(
            conn,
            {c: {"value_tier": "important"}},
            [(c, "r", "VIP")],
            [entry(c, T0, sid="imp", ref="important")],
        )
        contacts = await projection.load_contacts(conn, [c])
    assert contacts[c]["labels"] == {"value_tier": "important"}
    assert set(await anchors(engine)) == {"imp"}
    async with engine.begin() as conn:  # "newer": an older anchor does not move it back
        await projection.project_changes(
            conn, {}, [], [entry(c, T0 - timedelta(days=1), sid="imp", ref="important")]
        )
        await projection.project_changes(conn, {}, [], [])
    assert (await anchors(engine))["imp"] == T0


async def test_labels_merge_and_contacts_read_back_decoded(engine: AsyncEngine) -> None:
    a, b = unique("a"), unique("b")
    async with engine.begin() as conn:
        await projection.merge_labels(conn, {a: {"value_tier": "regular"}})
        await projection.patch_profile(
            conn, a, {"timezone": "Asia/Tokyo", "channel_consent": {"sms": False}}
        )
        await projection.merge_labels(conn, {a: {"value_tier": "VIP"}, b: {"value_tier": "x"}})
        contacts = await projection.load_contacts(conn, [a, b, a, "nobody"])
    assert set(contacts) == {a, b}
    assert contacts[a]["labels"] == {"value_tier": "VIP"}
    assert contacts[a]["channel_consent"] == {"sms": False}
    reach = projection.reachability(contacts[a])
    assert (reach.tier, reach.timezone, reach.channel_consent) == (
        "VIP",
        "Asia/Tokyo",
        {"sms": False},
    )
    assert projection.facts(contacts[b], "UTC").labels == {"value_tier": "x"}


def purchase(customer: str, at: datetime, n: int) -> Record:
    rec = encode_event(
        EmittedEvent(id=f"o-{n}", type="purchase", source="shop", subject=customer, time=at)
    )
    value = b'{"order_id":"1","amount":"1","currency":"USD"}'
    return ConsumerRecord(
        "events", 0, n, 0, 0, rec.key, value, None, len(rec.key), len(value), tuple(rec.headers)
    )


async def schedule_rows(engine: AsyncEngine, customer: str) -> list[ScheduleEntry]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT schedule_id, rule_id, customer_id, due_at, anchor_at, period, ref"
                " FROM notifier_schedules WHERE customer_id = :c ORDER BY schedule_id"
            ),
            {"c": customer},
        )
        return [ScheduleEntry(**r._mapping) for r in rows]


async def follow_up(engine: AsyncEngine, customer: str) -> datetime | None:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT anchor_at FROM notifier_schedules WHERE customer_id = :c"), {"c": customer}
        )
    return value if isinstance(value, datetime) else None


async def test_first_purchase_follow_up_from_the_earliest_purchase_in_any_order(
    engine: AsyncEngine,
) -> None:
    c, other = unique("c"), unique("c")
    handler = EventsHandler(playbook=PLAYBOOK, clock=lambda: T0, known=KnownBuyers(limit=8))

    async def feed(*records: Record) -> None:
        async with engine.begin() as conn:
            await handler(conn, list(records))

    await feed(purchase(c, T0, 1), purchase(c, T0 - timedelta(hours=1), 2))
    assert await follow_up(engine, c) == T0 - timedelta(hours=1)
    # Scheduled in SQL, exactly the entry the domain describes.
    (rule,) = PLAYBOOK.scheduled(FirstPurchaseTrigger)
    assert await schedule_rows(engine, c) == [
        first_purchase_entry(rule, c, T0 - timedelta(hours=1))
    ]
    assert handler.earliest_due == T0 - timedelta(hours=1) + timedelta(days=7)
    assert len(handler.known) == 0  # new customers: nothing known yet
    # A later purchase changes nothing, and teaches the handler the customer bought before.
    await feed(purchase(c, T0 + timedelta(days=2), 3))
    assert await follow_up(engine, c) == T0 - timedelta(hours=1)
    assert handler.known.covers(c, T0 + timedelta(days=3))
    assert handler.earliest_due is None
    # An earlier one than known still moves the follow-up.
    await feed(purchase(c, T0 - timedelta(days=1), 4), purchase(other, T0, 5))
    assert await follow_up(engine, c) == T0 - timedelta(days=1)
    assert await follow_up(engine, other) == T0
    # A batch of purchases of customers known to have bought earlier writes nothing (it only
    # reads whether a customer was erased since the cache learnt them).
    handler.known.learn({c: T0 - timedelta(days=1), other: T0})
    async with engine.connect() as conn:
        outcome = await handler(conn, [purchase(c, T0, 6), purchase(other, T0, 7)])
        assert outcome.applied == 2
    assert len(handler.known) == 2
    # Once a customer is erased, the cache is stale: the id's next purchase is a new
    # customer's first, and schedules its follow-up.
    async with engine.begin() as conn:
        await erase_customer(conn, Erasure("e-1", c, T0 + timedelta(days=5)))
    await feed(purchase(c, T0 + timedelta(days=6), 8))
    assert await follow_up(engine, c) == T0 + timedelta(days=6)
    assert await follow_up(engine, other) == T0


def test_known_buyers_forget_the_oldest_when_full() -> None:
    known = KnownBuyers(limit=8)
    known.learn({f"c{i}": T0 for i in range(9)})
    assert len(known) == 6
    assert not known.covers("c0", T0)
    assert known.covers("c8", T0)
    assert not known.covers("c8", T0 - timedelta(seconds=1))
