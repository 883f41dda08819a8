"""Fenced stored offsets on the real servers: the SQL compare-and-set follows the fencing rule
(tierflow_common/fencing.py), and a classifier whose partitions were claimed by another member
(it lost its assignment while paused) has its batches refused — no customer state, no offset
moved, nothing in the outbox — until it is assigned its partitions again, then applies each
event once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import classifier_client, eventually, produce, purchase_event
from tests.support import unique
from tierflow_common.db.engine import create_engine
from tierflow_common.db.offsets import claim_partitions, store_offsets
from tierflow_common.db.tables import consumer_offsets, outbox
from tierflow_common.fencing import OffsetsFenced, claimed_epoch, refused
from tierflow_common.kafka import make_consumer
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

pytestmark = pytest.mark.integration

# (member, claim?, partition, offset)
ops = st.lists(
    st.tuples(st.integers(0, 2), st.booleans(), st.integers(0, 2), st.integers(0, 10_000)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops)
def test_the_sql_compare_and_set_follows_the_rule(
    database: DatabaseSettings, sequence: list[tuple[int, bool, int, int]]
) -> None:
    asyncio.run(replay(database, sequence))


async def replay(database: DatabaseSettings, sequence: list[tuple[int, bool, int, int]]) -> None:
    group = unique("fence")
    held: list[dict[TopicPartition, int]] = [{}, {}, {}]
    epochs: dict[TopicPartition, int] = {}
    offsets: dict[TopicPartition, int] = {}
    engine = create_engine(database)
    try:
        for member, claim, p, offset in sequence:
            tp = TopicPartition("t", p)
            async with engine.begin() as conn:
                if claim:
                    got = await claim_partitions(conn, group, {tp: 0}, f"m{member}")
                    epochs[tp] = claimed_epoch(epochs.get(tp))
                    offsets.setdefault(tp, 0)
                    assert got[tp].epoch == epochs[tp]
                    assert got[tp].next_offset == offsets[tp]
                    held[member][tp] = got[tp].epoch
                    continue
            want_refused = refused(held[member], epochs, [tp])
            assert await write(engine, group, {tp: offset}, held[member]) == want_refused
            if not want_refused:
                offsets[tp] = offset
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        consumer_offsets.c.partition,
                        consumer_offsets.c.next_offset,
                        consumer_offsets.c.owner_epoch,
                    ).where(consumer_offsets.c.group_id == group)
                )
                assert {
                    TopicPartition("t", r.partition): (r.next_offset, r.owner_epoch) for r in rows
                } == {tp: (offsets[tp], epochs[tp]) for tp in epochs}
    finally:
        await engine.dispose()


async def write(
    engine: AsyncEngine,
    group: str,
    offsets: dict[TopicPartition, int],
    epochs: dict[TopicPartition, int],
) -> frozenset[TopicPartition]:
    """The partitions whose write the database refused (the transaction rolled back)."""
    try:
        async with engine.begin() as conn:
            await store_offsets(conn, group, offsets, epochs)
    except OffsetsFenced as exc:
        return frozenset(tp for tp in exc.partitions if isinstance(tp, TopicPartition))
    return frozenset()


def fenced_records(group: str) -> float:
    value = REGISTRY.get_sample_value(
        "tierflow_consumer_records_total", {"group": group, "outcome": "fenced"}
    )
    return value or 0.0


async def test_a_consumer_whose_partitions_were_claimed_away_is_refused(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    engine = create_engine(database)
    tps = [TopicPartition(topics.customer_events, p) for p in range(topics.partitions)]

    async def rows() -> dict[int, tuple[int, int, str | None]]:
        async with engine.connect() as conn:
            found = await conn.execute(
                select(
                    consumer_offsets.c.partition,
                    consumer_offsets.c.next_offset,
                    consumer_offsets.c.owner_epoch,
                    consumer_offsets.c.owner,
                ).where(consumer_offsets.c.topic == topics.customer_events)
            )
            return {r.partition: (r.next_offset, r.owner_epoch, r.owner) for r in found}

    async def pending_outbox() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(outbox)) or 0)

    try:
        async with classifier_client(
            kafka_settings, database, topics, consumer=ConsumerSettings(max_batch=20)
        ) as client:
            claimed = await eventually(
                rows, lambda r: len(r) == len(tps), timeout=60, what="partitions claimed"
            )
            async with engine.connect() as conn:
                group = str(await conn.scalar(select(consumer_offsets.c.group_id).limit(1)))
            # Another member takes the partitions (as the group does when this one is paused
            # past its session timeout); this one still believes it owns them.
            async with engine.begin() as conn:
                await claim_partitions(conn, group, {tp: 0 for tp in tps}, "usurper")
            usurped = await rows()
            assert all(epoch == claimed[p][1] + 1 for p, (_, epoch, _) in usurped.items())

            cid = unique("zombie")
            events = [purchase_event(f"{cid}-o{i}", cid, "25.00") for i in range(5)]
            await produce(kafka_settings, topics.customer_events, events)
            await eventually(
                lambda: asyncio.sleep(0, fenced_records(group)),
                lambda n: n >= len(events),
                timeout=60,
                what="writes refused",
            )
            # Refused whole: no state, no offset moved, nothing to publish.
            resp = await client.get(f"/v1/customers/{cid}")
            assert resp.status_code == 404, resp.text
            assert await rows() == usurped
            assert await pending_outbox() == 0

            # A rebalance (another consumer joins the group, then leaves) gives the classifier
            # its partitions back under fresh claims: every event is applied, once.
            await rebalance(kafka_settings, group, topics.customer_events)
            body = await eventually(
                lambda: customer(client, cid),
                lambda c: c.get("purchases_lifetime") == len(events),
                timeout=90,
                what="events applied after the new assignment",
            )
            assert body["purchases_lifetime"] == len(events)
            # Once the joiner has left, the classifier holds (and has claimed) every partition.
            final = await eventually(
                rows,
                lambda r: all(owner != "usurper" for _, _, owner in r.values()),
                timeout=60,
                what="every partition claimed back",
            )
            assert sum(off for off, _, _ in final.values()) == len(events)
    finally:
        await engine.dispose()


async def customer(client: httpx.AsyncClient, cid: str) -> dict[str, object]:
    resp = await client.get(f"/v1/customers/{cid}")
    if resp.status_code == 404:
        return {}
    assert resp.status_code == 200, resp.text
    features: dict[str, object] = resp.json()["features"]
    return features


async def rebalance(kafka: KafkaSettings, group: str, topic: str) -> None:
    """Join `group` with a plain consumer until it is assigned a partition, then leave."""
    joiner = make_consumer(kafka, group_id=group)
    joiner.subscribe([topic])
    await joiner.start()
    try:
        deadline = time.monotonic() + 60
        while not joiner.assignment():
            assert time.monotonic() < deadline, "the joining consumer was never assigned"
            await joiner.getmany(timeout_ms=200)
    finally:
        await joiner.stop()
