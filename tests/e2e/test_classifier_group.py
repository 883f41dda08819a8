"""The same stream through one classifier process (one transaction at a time) and through two
in one consumer group (each applying its batches in two lanes) — the second joining
mid-stream, then the first (the elected one) stopped mid-stream — ends with the same features
and labels for every customer, and no change is published twice.

Determinism: labels must not depend on when population statistics or churn models are built
(wall clock), so both databases start with the same published population (version 1) and
churn model, and the refresh and fit intervals are far longer than the test: nothing is
rebuilt or refitted during it, however the processes are scheduled, and every process —
including the one joining mid-stream — classifies by that population and model from its
first batch. Event times lie in the last 12 hours, so no time-driven transition (the
shortest is 2 days after a purchase) and no recency-quintile crossing (cuts ≥ 1 day) can fall
within the test: what a customer ends with depends on its events alone. The review
scheduler, the sweep machinery and the version following run as in production."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pytest
from aiokafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import eventually, produce
from tests.support import ROOT, Servers, ServiceProcess, isolated_topics, read_to_end, unique
from tierflow_classifier.adapters import churn_store, population_store
from tierflow_classifier.adapters.population_store import SweepProgress
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.churn import fit_model
from tierflow_common.contract import EmittedEvent
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import upgrade_head_async
from tierflow_common.db.tables import consumer_offsets, customers, outbox
from tierflow_common.kafka import ensure_topics, make_consumer
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.e2e

RULES = load_rules(ROOT / "config" / "classifier.yaml")
CUSTOMERS = 300
EVENTS = 3_000
T = TypeVar("T")
COMPARED = (
    "purchases_lifetime",
    "net_spend_lifetime",
    "first_purchase_at",
    "last_purchase_at",
    "refunds_lifetime",
    "refunded_lifetime",
    "value_tier",
    "features",
    "profile",
    "first_seen_at",
    "recent_purchases",
    "rule_set_version",
)


@dataclass
class World:
    """One isolated database + topic set with its classifier processes."""

    database: DatabaseSettings
    topics: TopicSettings
    engine: AsyncEngine
    env: dict[str, str]
    group: str


def make_stream(seed: int, now: datetime) -> list[EmittedEvent]:
    """Purchases (some discounted), partial refunds of earlier orders, visits, support
    contacts, complaints and their resolutions, referrals and profiles, in time order."""
    rnd = random.Random(seed)
    start = now - timedelta(hours=12)
    step = (timedelta(hours=11)) / EVENTS
    orders: dict[str, list[tuple[str, int]]] = {}
    refunded: set[str] = set()
    complaints: dict[str, list[str]] = {}
    events: list[EmittedEvent] = []
    for i in range(EVENTS):
        cid = f"cust-{rnd.randrange(CUSTOMERS):03d}"
        at = start + step * i
        roll = rnd.random()
        kind, data = "purchase", dict[str, Any]()
        if roll < 0.55 or cid not in orders:
            cents = rnd.choice([rnd.randint(500, 20_000), rnd.randint(50_000, 300_000)])
            oid = f"o-{i}"
            orders.setdefault(cid, []).append((oid, cents))
            data = {"order_id": oid, "amount": f"{cents / 100:.2f}", "currency": "USD"}
            if rnd.random() < 0.3:
                data["discount_amount"] = f"{cents / 1000:.2f}"
        elif roll < 0.65 and (open_ := [o for o in orders[cid] if o[0] not in refunded]):
            oid, cents = rnd.choice(open_)
            refunded.add(oid)
            kind = "refund"
            data = {"order_id": oid, "amount": f"{cents // 3 / 100:.2f}", "currency": "USD"}
        elif roll < 0.93:
            kind = "interaction"
            pick = rnd.random()
            if pick < 0.15:
                ticket = f"t-{i}"
                complaints.setdefault(cid, []).append(ticket)
                data = {"kind": "complaint", "complaint_id": ticket}
            elif pick < 0.25 and complaints.get(cid):
                data = {"kind": "complaint_resolved", "complaint_id": complaints[cid].pop(0)}
            elif pick < 0.3:
                other = f"cust-{rnd.randrange(CUSTOMERS):03d}"
                data = {"kind": "referral", "referred_customer_id": other}
            elif pick < 0.6:
                data = {"kind": "support_contact"}
            else:
                data = {"kind": "visit"}
        else:
            kind = "profile"
            data = {
                "region": rnd.choice(
                    [
                        {"country": "CN", "province": "Zhejiang"},
                        {"country": "CN", "province": "Hunan"},
                        {"country": "US"},
                    ]
                )
            }
        events.append(
            EmittedEvent(id=f"e-{i}", type=kind, source="shop", subject=cid, time=at, data=data)
        )
    return events


async def seed_versions(engine: AsyncEngine, now: datetime) -> tuple[int, str]:
    """The same population and churn model in every world, published before any process."""
    summary = population_store.Summary()
    for i in range(500):
        summary.add(float(1 + i % 100), float(i % 9), float((i * 37) % 4_000))
    stats = await population_store.publish(engine, RULES, now, summary)
    assert stats is not None
    async with engine.begin() as conn:  # nobody to sweep yet
        await population_store.save_progress(conn, SweepProgress(stats.version, "", True))
    rng = np.random.default_rng(7)
    n = 400
    x = rng.poisson(2, n).astype(float)
    big_t = rng.uniform(10, 60, n)
    t_x = np.where(x > 0, rng.uniform(0, 1, n) * big_t, 0.0)
    spend = np.where(x > 0, rng.uniform(10, 200, n), np.nan)
    model = fit_model(x, t_x, big_t, spend, time_unit_days=7.0)
    await churn_store.publish_model(engine, model, now, churn_store.describe(model, float(x.sum())))
    return stats.version, model.version


async def make_world(servers: Servers, now: datetime, *, lanes: int, batch: int) -> World:
    database = DatabaseSettings(database_url=servers.create_database(unique("group")))
    await upgrade_head_async(database)
    kafka = KafkaSettings(bootstrap_servers=servers.bootstrap_servers)
    topics = isolated_topics(partitions=6)
    await ensure_topics(kafka, topics)
    engine = create_engine(database)
    await seed_versions(engine, now)
    group = unique("classifier")
    env = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "CLASSIFIER_RULES_FILE": str(ROOT / "config" / "classifier.yaml"),
        "CLASSIFIER_GROUP_ID": group,
        "CLASSIFIER_CLOCK": "wall",
        # Nothing is rebuilt or refitted during the test (see the module docstring).
        "CLASSIFIER_POPULATION_REFRESH_S": "86400",
        "CLASSIFIER_CHURN_FIT_INTERVAL_S": "86400",
        # Small batches: many transactions, so the rebalances fall between some of them. With
        # two lanes a full batch is two transactions at once (parts of at least 100 records).
        "CONSUMER_MAX_BATCH": str(batch),
        "CLASSIFIER_BATCH_LANES": str(lanes),
        **topics.as_env(),
    }
    return World(database, topics, engine, env, group)


async def drained(world: World, kafka: KafkaSettings) -> bool:
    """Every record read and committed, the outbox relayed, no review due."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(world.topics.customer_events, p) for p in range(6)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    async with world.engine.connect() as conn:
        rows = await conn.execute(
            select(consumer_offsets.c.partition, consumer_offsets.c.next_offset).where(
                consumer_offsets.c.group_id == world.group,
                consumer_offsets.c.topic == world.topics.customer_events,
            )
        )
        stored = {r.partition: r.next_offset for r in rows}
        pending = await conn.scalar(select(func.count()).select_from(outbox))
        due = await conn.scalar(
            select(func.count())
            .select_from(customers)
            .where(customers.c.next_review_at <= func.now())
        )
    return (
        all(stored.get(tp.partition, 0) >= end for tp, end in ends.items())
        and pending == 0
        and due == 0
    )


async def final_state(world: World) -> dict[str, dict[str, Any]]:
    async with world.engine.connect() as conn:
        rows = await conn.execute(select(customers).order_by(customers.c.customer_id))
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            m = r._mapping
            out[m["customer_id"]] = {
                **{c: m[c] for c in COMPARED},
                "labels": {
                    d: (a["label"], a.get("rule"), a.get("rule_set_version"))
                    for d, a in m["dimensions"].items()
                },
            }
    return out


def applied(world: World) -> Any:
    async def count() -> int:
        async with world.engine.connect() as conn:
            n = await conn.scalar(
                select(func.coalesce(func.sum(consumer_offsets.c.next_offset), 0)).where(
                    consumer_offsets.c.group_id == world.group
                )
            )
        return int(n or 0)

    return count


def _probe(
    check: Callable[[World, KafkaSettings], Awaitable[T]], world: World, kafka: KafkaSettings
) -> Callable[[], Awaitable[T]]:
    return lambda: check(world, kafka)


async def test_two_processes_with_rebalances_end_as_one_does(
    servers: Servers, log_dir: Path
) -> None:
    now = datetime.now(UTC)
    kafka = KafkaSettings(bootstrap_servers=servers.bootstrap_servers)
    # One after the other: alembic's migration context is process-global.
    # One process applying one transaction at a time; two processes applying two each.
    one = await make_world(servers, now, lanes=1, batch=100)
    two = await make_world(servers, now, lanes=2, batch=200)
    stream = make_stream(seed=11, now=now)
    sixth = len(stream) // 6
    single = ServiceProcess("classifier", one.env, log_dir)
    first = ServiceProcess("classifier", two.env, log_dir)
    second = ServiceProcess("classifier", two.env, log_dir)
    try:
        single.start(wait_ready=False)
        first.start(wait_ready=False)
        single.wait_ready()
        first.wait_ready()
        await produce(kafka, one.topics.customer_events, stream)
        await produce(kafka, two.topics.customer_events, stream[: 2 * sixth])
        # Rebalance 1: a second process joins while the next part streams in; then both
        # share the partitions for another part.
        second.start(wait_ready=False)
        await produce(kafka, two.topics.customer_events, stream[2 * sixth : 3 * sixth])
        second.wait_ready()
        await produce(kafka, two.topics.customer_events, stream[3 * sixth : 4 * sixth])
        await eventually(applied(two), lambda n: n >= 4 * sixth, timeout=60, what="shared part")
        # Rebalance 2: the first one — the elected one — stops while records are in flight.
        await produce(kafka, two.topics.customer_events, stream[4 * sixth : 5 * sixth])
        assert first.stop() in (0, -15)
        await produce(kafka, two.topics.customer_events, stream[5 * sixth :])

        for world in (one, two):
            await eventually(_probe(drained, world, kafka), bool, timeout=90, what="drain")
        got_one, got_two = await asyncio.gather(final_state(one), final_state(two))
    finally:
        for proc in (single, first, second):
            proc.stop()
        for world in (one, two):
            await world.engine.dispose()

    # Both processes of the second world worked, and the lead moved with the first one.
    assert "leadership_taken" in first.log()
    assert "leadership_taken" in second.log()
    assert "partitions_assigned" in second.log()

    # Identical features and labels for every customer.
    assert set(got_one) == set(got_two)
    assert len(got_one) >= CUSTOMERS * 0.9
    for cid, want in got_one.items():
        assert got_two[cid] == want, cid
    labels = Counter(body["labels"]["value_tier"][0] for body in got_one.values())
    assert len(labels) >= 2, labels  # the comparison covers more than one tier
    assert all(
        "+pop1" in body["labels"]["rfm"][2]
        for body in got_one.values()
        if body["purchases_lifetime"]
    )

    # No change published twice, in either world; the last tier change on the wire is the tier.
    for world, state in ((one, got_one), (two, got_two)):
        for topic in (world.topics.classification_changed, world.topics.tier_changed):
            records = await read_to_end(kafka, topic)
            ids = Counter((r["source"], r["id"]) for r in records)
            twice = [k for k, n in ids.items() if n > 1]
            assert not twice, f"{len(twice)} changes published twice on {topic}: {twice[:5]}"
        # Version 2 records carry several changes each: no change in two of them either.
        changes = Counter(
            ch["change_id"]
            for r in await read_to_end(kafka, world.topics.classification_changed)
            for ch in orjson.loads(r["value"])["changes"]
        )
        assert changes
        assert not [k for k, n in changes.items() if n > 1]
        tiers = await read_to_end(kafka, world.topics.tier_changed)
        last = {r["subject"]: orjson.loads(r["value"])["to"] for r in tiers}
        for cid, body in state.items():
            if body["purchases_lifetime"]:
                assert last.get(cid) == body["value_tier"], cid
