"""The dedup ledgers on the real PostgreSQL: weekly partitions by event time, created for what a
batch needs and ahead, dropped past the retention window; a resend within the window is
deduped by id, a purchase resent after its week was dropped by its order id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from alembic import command
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import (
    classifier_client,
    database_at,
    eventually,
    produce,
    purchase_event,
)
from tests.support import Servers
from tests.unit.test_contract import purchase
from tierflow_classifier.adapters.repository import claim_events, release_events
from tierflow_common.db import ledger_partitions
from tierflow_common.db.engine import create_engine
from tierflow_common.db.ledger_partitions import (
    WEEK,
    LedgerPartitionMissing,
    LedgerPartitions,
    partition_name,
    read_partitions,
    week_start,
)
from tierflow_common.db.migrate import alembic_config
from tierflow_common.keys import create_key
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_common.transient import is_transient
from tierflow_ingest.bootstrap import create_app as create_ingest
from tierflow_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration
LEDGER = "processed_events"
DAYS_30 = timedelta(days=30)


@pytest.fixture
async def engine(database: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    e = create_engine(database)
    yield e
    await e.dispose()


async def claim(engine: AsyncEngine, keys: list[tuple[str, str, str, datetime]]) -> set[object]:
    async with engine.begin() as conn:
        return set(await claim_events(conn, keys))


async def weeks(engine: AsyncEngine, table: str = LEDGER) -> list[datetime | None]:
    async with engine.connect() as conn:
        return [p.lower for p in await read_partitions(conn, table)]


async def ledger_rows(engine: AsyncEngine, table: str = LEDGER) -> set[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT source, event_id FROM {table}"))
        return {(r.source, r.event_id) for r in rows}


def pruned_rows(table: str) -> float:
    return REGISTRY.get_sample_value("tierflow_rows_pruned_total", {"table": table}) or 0.0


def clock_at(moment: list[datetime]) -> Callable[[], datetime]:
    return lambda: moment[0]


async def test_a_batch_gets_partitions_for_its_weeks_and_a_resend_in_the_window_is_deduped(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    last_week, far_ahead = now - WEEK, now + 10 * WEEK
    batch = [
        ("shop", "e-1", "ann", now - timedelta(minutes=5)),
        ("shop", "e-2", "ann", last_week),
        ("pos", "e-3", "bob", far_ahead),
    ]
    assert await claim(engine, batch) == {("shop", "e-1"), ("shop", "e-2"), ("pos", "e-3")}
    assert await weeks(engine) == [week_start(t) for t in (last_week, now, far_ahead)]
    # The same events again (in another order, with one new one): only the new one is applied.
    again = [batch[2], batch[0], ("shop", "e-4", "ann", now), batch[1]]
    assert await claim(engine, again) == {("shop", "e-4")}
    # Released (dead-lettered) events can be applied when fixed and resent.
    async with engine.begin() as conn:
        await release_events(conn, [("shop", "e-2"), ("pos", "e-3")])
    assert await claim(engine, batch) == {("shop", "e-2"), ("pos", "e-3")}


async def test_an_event_older_than_the_window_is_applied_without_a_ledger_row(
    engine: AsyncEngine,
) -> None:
    old = ("shop", "e-old", "ann", datetime.now(UTC) - timedelta(days=60))
    recent = ("shop", "e-new", "ann", datetime.now(UTC))
    assert await claim(engine, [old, recent]) == {("shop", "e-old"), ("shop", "e-new")}
    # Not remembered: the customer's state is its guard (natural keys), not the ledger.
    assert await claim(engine, [old, recent]) == {("shop", "e-old")}
    assert await ledger_rows(engine) == {("shop", "e-new")}
    assert await weeks(engine) == [week_start(recent[3])]  # no partition for the old week


async def test_processes_racing_to_create_the_same_weeks_create_each_once(
    database: DatabaseSettings,
) -> None:
    engines = [create_engine(database) for _ in range(3)]
    try:
        now = datetime.now(UTC)
        wanted = [week_start(now) + k * WEEK for k in range(-3, 4)]
        ledgers = [LedgerPartitions(e, LEDGER) for e in engines]
        created = await asyncio.gather(*(ledger.ensure(wanted) for ledger in ledgers))
        names = sorted(n for c in created for n in c)
        assert names == sorted(partition_name(LEDGER, w) for w in wanted)  # once each
        assert await weeks(engines[0]) == wanted
    finally:
        for e in engines:
            await e.dispose()


async def test_retention_drops_the_weeks_past_the_window_and_keeps_the_rest(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    moment = [now]
    ledger = LedgerPartitions(engine, LEDGER, retention=DAYS_30, clock=clock_at(moment))
    times = [now - timedelta(days=d) for d in (0, 10, 29)]
    batch = [("shop", f"e-{i}", "ann", t) for i, t in enumerate(times)]
    assert len(await claim(engine, batch)) == 3
    _created, dropped = await ledger.maintain()
    assert dropped == []
    assert set(await weeks(engine)) >= {week_start(now) + k * WEEK for k in range(3)}  # ahead

    # 15 days on: the week of the 29-day-old event ended more than 30 days (and the grace)
    # ago, those of the others did not.
    moment[0] = now + timedelta(days=15)
    before = pruned_rows(LEDGER)
    _, dropped = await ledger.maintain()
    assert dropped == [partition_name(LEDGER, week_start(times[2]))]
    assert pruned_rows(LEDGER) - before == 1  # the dropped week's one entry, counted
    assert week_start(times[2]) not in await weeks(engine)
    assert {week_start(times[0]), week_start(times[1])} <= set(await weeks(engine))
    assert await ledger_rows(engine) == {("shop", "e-0"), ("shop", "e-1")}
    # What is kept still dedupes.
    assert await claim(engine, batch[:2]) == set()


async def test_a_week_dropped_behind_a_process_s_back_is_retried_not_dead_lettered(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    key = ("shop", "e-1", "ann", now)
    assert await claim(engine, [key]) == {("shop", "e-1")}
    async with engine.begin() as conn:  # an operator (or another clock) drops the week
        await conn.execute(text(f'DROP TABLE "{partition_name(LEDGER, week_start(now))}"'))
    with pytest.raises(LedgerPartitionMissing) as info:
        await claim(engine, [key])
    assert is_transient(info.value)  # the consumer retries the batch, it dead-letters nothing
    assert await claim(engine, [key]) == {("shop", "e-1")}  # the retry recreated the week


async def test_migration_0008_keeps_the_rows_of_a_ledger_and_their_dedup(
    servers: Servers,
) -> None:
    db = await database_at(servers, "0007_unread_partitions")
    cfg = alembic_config(db)
    e = create_engine(db)
    try:
        async with e.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO processed_events (source, event_id, customer_id) "
                    "VALUES ('shop', 'before-1', 'ann'), ('shop', 'before-2', 'bob')"
                )
            )
            await conn.execute(
                text("INSERT INTO ingest_receipts (source, event_id) VALUES ('shop', 'before-1')")
            )
        await e.dispose()
        await asyncio.to_thread(command.upgrade, cfg, "heads")

        # The old rows have no event time; a resend of one (at its real time, in the window)
        # is still recognised, a new event is not.
        recent = datetime.now(UTC) - timedelta(days=2)
        keys = [("shop", "before-1", "ann", recent), ("shop", "after-1", "ann", recent)]
        assert await claim(e, keys) == {("shop", "after-1")}
        assert await ledger_rows(e) == {
            ("shop", "before-1"),
            ("shop", "before-2"),
            ("shop", "after-1"),
        }
        assert await ledger_rows(e, "ingest_receipts") == {("shop", "before-1")}
        async with e.connect() as conn:
            (legacy,) = [p for p in await read_partitions(conn, LEDGER) if p.lower is None]
        assert legacy.name == "processed_events_legacy"
        assert legacy.upper is not None
        assert legacy.upper > datetime.now(UTC)
        await e.dispose()

        await asyncio.to_thread(command.downgrade, cfg, "0007_unread_partitions")
        assert await ledger_rows(e) == {
            ("shop", "before-1"),
            ("shop", "before-2"),
            ("shop", "after-1"),
        }
        async with e.begin() as conn:  # the old key again: (source, event_id)
            await conn.execute(
                text(
                    "INSERT INTO processed_events (source, event_id, customer_id) "
                    "VALUES ('shop', 'before-1', 'x') ON CONFLICT (source, event_id) DO NOTHING"
                )
            )
    finally:
        await e.dispose()


# Through the services -----------------------------------------------------------------------


@pytest.fixture
async def classifier(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    async with classifier_client(kafka_settings, database, topics) as client:
        yield client


async def counted(client: httpx.AsyncClient, cid: str) -> tuple[int, str] | None:
    resp = await client.get(f"/v1/customers/{cid}")
    if resp.status_code == 404:
        return None
    f = resp.json()["features"]
    return int(f["purchases_lifetime"]), str(f["net_spend_lifetime"])


async def test_a_purchase_resent_after_its_ledger_week_was_dropped_is_not_counted_again(
    classifier: httpx.AsyncClient,
    kafka_settings: KafkaSettings,
    topics: TopicSettings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order = purchase_event("late-1", "olga", "120.00")
    await produce(kafka_settings, topics.customer_events, [order])
    await eventually(lambda: counted(classifier, "olga"), lambda c: c == (1, "120"))
    assert ("shop", "late-1") in await ledger_rows(engine)

    # 40 days on, maintenance has dropped the week the order's ledger row was in.
    later = datetime.now(UTC) + timedelta(days=40)
    monkeypatch.setattr(ledger_partitions, "utc_now", lambda: later)
    _, dropped = await LedgerPartitions(engine, LEDGER, retention=DAYS_30).maintain()
    assert partition_name(LEDGER, week_start(order.time)) in dropped
    assert ("shop", "late-1") not in await ledger_rows(engine)

    # The upstream system resends the order, then sends a new one (same partition: in order).
    marker = purchase_event("late-2", "olga", "30.00")
    await produce(kafka_settings, topics.customer_events, [order, marker])
    state = await eventually(
        lambda: counted(classifier, "olga"), lambda c: c is not None and c[0] >= 2
    )
    assert state == (2, "150")  # the resent order counted once: known by its order id


@pytest.fixture
async def ingest(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    engine = create_engine(database)
    async with engine.begin() as conn:
        _, key = await create_key(conn, name="ledger test", sources=["shop"])
    await engine.dispose()
    app = create_ingest(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=IngestSettings(keys_refresh_s=0.2, receipt_retention_days=30),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://ingest",
            headers={"authorization": f"Bearer {key}"},
        ) as client:
            await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
            yield client


async def test_the_ingest_reports_resends_in_the_window_and_cannot_say_beyond_it(
    ingest: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    # Maintenance at start-up prepared this week and the next two.
    ahead = [week_start(now) + k * WEEK for k in range(3)]
    await eventually(lambda: weeks(engine, "ingest_receipts"), lambda w: set(ahead) <= set(w))

    headers = {"content-type": "application/cloudevents+json"}

    async def send(event_id: str, at: datetime) -> list[object]:
        body = orjson.dumps(purchase(id=event_id, time=at.isoformat()))
        answers = [await ingest.post("/v1/events", content=body, headers=headers) for _ in range(2)]
        assert [a.status_code for a in answers] == [202, 202]
        return [a.json()["duplicate"] for a in answers]

    assert await send("recent-1", now - timedelta(days=20)) == [False, True]
    assert await send("old-1", now - timedelta(days=45)) == [None, None]  # no receipt kept
    assert await ledger_rows(engine, "ingest_receipts") == {("shop", "recent-1")}
