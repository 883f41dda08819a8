"""Broker restart that loses its log: the scenario's own Tansu (in-memory storage) is stopped
after the classifier has applied events and stored their offsets, and a fresh one is started on
the same port — its log empty — with the topics created again. The classifier detects that its
stored offsets lie beyond the new log, says so in its log and on /metrics
(`tierflow_consumer_log_loss_total`), and reads the new log from its start; events acknowledged
before the restart and sent again after it (what a producer replays when told the broker lost
data) are applied once, new ones once, and the oracle finds nothing lost or counted twice.

The change records published before the restart are gone from the new broker, but downstream
consumers had them: they are written back to the new change topics before anything else, so
the log checker judges the changes across the restart as one history (a change published again
for an event resent, or one missing, would show)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from sqlalchemy import select, text

from tests.chaos.harness import (
    PARTITIONS,
    World,
    judge,
    paused,
    purchases,
    send,
    wait_drained,
    world,
)
from tests.chaos.outages import dedicated_tansu, metric, until
from tests.support import Servers, plain_producer, raw_records
from tierflow_common.db.tables import consumer_offsets
from tierflow_common.kafka import ensure_topics
from tierflow_common.topic_reader import log_ends, reader

pytestmark = pytest.mark.e2e

LOG_LOSS = "tierflow_consumer_log_loss_total"


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    classifiers: int


SHORT = Size(events=900, customers=90, classifiers=1)
FULL = Size(events=20_000, customers=1_000, classifiers=2)


async def stored_offsets(w: World) -> dict[int, int]:
    async with w.engine.connect() as conn:
        rows = await conn.execute(
            select(consumer_offsets.c.partition, consumer_offsets.c.next_offset).where(
                consumer_offsets.c.group_id == w.group,
                consumer_offsets.c.topic == w.topics.customer_events,
            )
        )
        return {r.partition: r.next_offset for r in rows}


async def input_ends(w: World) -> dict[int, int]:
    async with reader(w.kafka) as consumer:
        tps = [TopicPartition(w.topics.customer_events, p) for p in range(PARTITIONS)]
        return {tp.partition: end for tp, end in (await log_ends(consumer, tps)).items()}


async def rewinds(w: World) -> dict[int, tuple[int, int]]:
    """Partition -> (old, new) of each decrease of a stored input offset (the harness's trigger
    notes them); after a lost log, one per partition is the consumer starting the new log."""
    async with w.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT partition, old, new FROM chaos_offset_regressions WHERE topic = :t"),
            {"t": w.topics.customer_events},
        )
        return {r.partition: (r.old, r.new) for r in rows}


@pytest.mark.parametrize(
    "size", [SHORT, pytest.param(FULL, marks=pytest.mark.chaos)], ids=["short", "full"]
)
async def test_a_broker_that_lost_its_log_is_detected_and_nothing_counts_twice(
    servers: Servers, log_dir: Path, size: Size
) -> None:
    events = purchases(size.events, size.customers, seed=31, tag="broker-restart")
    before, after = events[: 3 * len(events) // 4], events[3 * len(events) // 4 :]
    # Acknowledged before the loss and sent again after it. Fewer than were stored: a new log
    # longer than the stored offsets before the consumer looks cannot be told from the old one.
    resent = before[5 * len(before) // 6 :]
    with dedicated_tansu(servers, log_dir) as (tansu, own):
        async with world(own, log_dir, classifiers=size.classifiers) as w:
            await send(w, before)
            await wait_drained(w, timeout=180)
            stored_before = await stored_offsets(w)
            assert len(stored_before) == PARTITIONS
            assert min(stored_before.values()) > 0
            changes = [w.topics.classification_changed, w.topics.tier_changed]
            published = {topic: await raw_records(w.kafka, topic) for topic in changes}
            assert any(published.values())

            # The services wait, paused, while the empty broker comes back and the topics are
            # made again: Tansu creates a topic a client's metadata request names (with its own
            # default partition count), so a classifier reconnecting first made the input
            # topic before ensure_topics could, and the test read partitions that never came
            # (CI, 2026-12-02). With Apache Kafka's auto.create.topics.enable=false this
            # cannot happen; with Tansu, recreate the topics before the services reconnect.
            with paused(w.ingest, *w.processes):
                await asyncio.to_thread(tansu.stop)
                await asyncio.to_thread(tansu.start)
                restarted_at = time.monotonic()
                await ensure_topics(w.kafka, w.topics)
            # The fresh broker really has an empty log.
            assert set((await input_ends(w)).values()) == {0}
            assert not any([await raw_records(w.kafka, topic) for topic in changes])
            producer = plain_producer(w.kafka)
            await producer.start()
            try:
                for topic, records in published.items():
                    for r in records:
                        await producer.send(
                            topic,
                            r.value,
                            key=r.key,
                            headers=list(r.headers),
                            partition=r.partition,
                        )
                await producer.flush()
            finally:
                await producer.stop()

            await send(w, [*resent, *after])
            ends_after = await input_ends(w)
            # The new log is shorter than what was stored: the loss is there to be seen.
            assert all(0 < ends_after[p] < stored_before[p] for p in range(PARTITIONS)), (
                ends_after,
                stored_before,
            )

            async def detected() -> bool:
                found = [
                    await metric(svc, LOG_LOSS, topic=w.topics.customer_events)
                    for svc in w.classifiers
                ]
                return sum(found) >= 1

            await until(detected, f"{LOG_LOSS} on the classifiers' /metrics", 120)

            async def rewound() -> bool:
                return len(await rewinds(w)) == PARTITIONS

            await until(rewound, "every partition's stored offset moved to the new log", 180)
            await wait_drained(w, timeout=180)
            recovery = time.monotonic() - restarted_at
            name = f"broker-restart-{'full' if size is FULL else 'short'}"
            moved = await rewinds(w)
            result = await judge(w, name, recovery_s=recovery, faults=1, rewound=stored_before)
            logs = "".join(svc.log() for svc in w.classifiers)
            partitions_alerted = {
                p
                for p in range(PARTITIONS)
                if sum(
                    [
                        await metric(
                            svc, LOG_LOSS, topic=w.topics.customer_events, partition=str(p)
                        )
                        for svc in w.classifiers
                    ]
                )
                >= 1
            }

    assert result.passed, result
    assert result.acknowledged == len(events)
    # Detected and alerted, for every partition whose log was lost: a log line and the metric.
    assert "stored_offset_beyond_empty_log" in logs or "position_beyond_log_end" in logs
    assert partitions_alerted == set(range(PARTITIONS))
    # Each partition's stored offset went back once, from where it was to within the new log.
    assert all(moved[p][0] == stored_before[p] for p in range(PARTITIONS)), moved
    assert all(moved[p][1] <= ends_after[p] for p in range(PARTITIONS)), (moved, ends_after)
