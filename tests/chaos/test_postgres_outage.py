"""PostgreSQL down under load: the scenario's own PostgreSQL server is stopped while events
flow through the ingest, kept down (30 s in the full form), then started again on the same data
directory and port. Meanwhile the ingest goes on acknowledging events (it needs the database
for no request: keys are cached, receipts only report resends), the classifier applies nothing
(its offsets, mirrored to the broker, stay where they were while the input grows), retries
instead of dead-lettering or exiting, and says on /readyz that its database is away; once the
server is back everything drains, and the oracle finds nothing lost or counted twice."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition
from sqlalchemy import func, select

from tests.access import bearer
from tests.chaos.harness import (
    PARTITIONS,
    World,
    cloudevent,
    judge,
    purchases,
    send,
    wait_drained,
    world,
)
from tests.chaos.outages import dedicated_postgres, readiness, until
from tests.support import Servers
from tierflow_common.db.tables import consumer_offsets
from tierflow_common.operations import broker_offsets
from tierflow_common.topic_reader import log_ends, reader

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    outage_s: float
    classifiers: int


SHORT = Size(events=900, customers=90, outage_s=4, classifiers=1)
FULL = Size(events=20_000, customers=1_000, outage_s=30, classifiers=2)


async def applied_offsets(w: World) -> dict[int, int]:
    """The classifier's offsets as it mirrors them to the broker after each committed batch
    (PostgreSQL holds the offsets of record, but it is the one that is down)."""
    tps = [TopicPartition(w.topics.customer_events, p) for p in range(PARTITIONS)]
    found = await broker_offsets(w.kafka, tps, [w.group])
    return found.get((w.group, w.topics.customer_events), {})


async def input_end(w: World) -> int:
    async with reader(w.kafka) as consumer:
        tps = [TopicPartition(w.topics.customer_events, p) for p in range(PARTITIONS)]
        return sum((await log_ends(consumer, tps)).values())


@dataclass
class Observed:
    """What a user of the running pipeline sees while the database is down."""

    ingest_statuses: list[int] = field(default_factory=list)  # single events posted
    ingest_ready: list[int] = field(default_factory=list)  # the ingest's /readyz
    classifier_unready: int = 0  # /readyz answered 503 naming the database


def assert_alive(w: World) -> None:
    for svc in w.classifiers:
        assert svc.proc is not None
        assert svc.proc.poll() is None, f"a classifier exited: {svc.log()[-3000:]}"


async def watch_outage(w: World, size: Size, observed: Observed) -> None:
    """Until the outage ends: single events posted to the ingest (a user's request), both
    services' /readyz, and the classifiers still alive."""
    headers = {"content-type": "application/cloudevents+json", **bearer(w.key)}
    probes = purchases(1_000, 20, seed=99, tag="during-outage")
    deadline = time.monotonic() + size.outage_s
    async with httpx.AsyncClient(timeout=30) as client:
        for event in probes:
            if time.monotonic() >= deadline:
                break
            resp = await client.post(
                f"{w.ingest.url}/v1/events", json=cloudevent(event), headers=headers
            )
            observed.ingest_statuses.append(resp.status_code)
            if resp.status_code == 202:
                w.acknowledged.append(event)
            else:  # only if it needed the database: 503 with Retry-After, never a 500
                assert resp.status_code == 503, resp.text
                assert "retry-after" in resp.headers
            status, checks = await readiness(w.classifiers[0])
            if status == 503 and checks["database"].startswith("fail"):
                observed.classifier_unready += 1
            observed.ingest_ready.append((await readiness(w.ingest))[0])
            assert_alive(w)
            await asyncio.sleep(0.3)


@pytest.mark.parametrize(
    "size", [SHORT, pytest.param(FULL, marks=pytest.mark.chaos)], ids=["short", "full"]
)
async def test_the_pipeline_waits_out_a_postgres_outage(
    servers: Servers, log_dir: Path, size: Size
) -> None:
    events = purchases(size.events, size.customers, seed=23, tag="pg-outage")
    third = len(events) // 3
    with dedicated_postgres(servers) as (pg, own):
        async with world(own, log_dir, classifiers=size.classifiers) as w:
            await send(w, events[:third])

            async def all_stored() -> bool:
                async with w.engine.connect() as conn:
                    stored = await conn.scalar(
                        select(func.count())
                        .select_from(consumer_offsets)
                        .where(
                            consumer_offsets.c.group_id == w.group,
                            consumer_offsets.c.next_offset > 0,
                        )
                    )
                return stored == PARTITIONS

            await until(all_stored, "stored offsets on every partition", 120)

            async def flow() -> None:
                """The rest, spread over the outage and a little past it."""
                chunk = 50
                pause = size.outage_s / max(len(events[third:]) / chunk, 1)
                for start in range(third, len(events), chunk):
                    await send(w, events[start : start + chunk], chunk=chunk)
                    await asyncio.sleep(pause)

            flowing = asyncio.create_task(flow())
            await asyncio.sleep(0.5)
            acked_before = len(w.acknowledged)
            await asyncio.to_thread(pg.stop)
            # A batch committed just before the stop mirrors its offsets right after.
            await asyncio.sleep(1)
            offsets_at_stop, end_at_stop = await applied_offsets(w), await input_end(w)
            observed = Observed()
            await watch_outage(w, size, observed)
            offsets_at_end, end_at_end = await applied_offsets(w), await input_end(w)
            acked_during = len(w.acknowledged) - acked_before
            await asyncio.to_thread(pg.start)
            back_at = time.monotonic()
            await flowing
            await wait_drained(w, timeout=300)
            recovery = time.monotonic() - back_at
            assert_alive(w)
            assert (await readiness(w.classifiers[0]))[0] == 200
            name = f"postgres-outage-{'full' if size is FULL else 'short'}"
            result = await judge(w, name, recovery_s=recovery, faults=1)
            retries = sum(svc.log().count("batch_retry") for svc in w.classifiers)

    assert result.passed, result
    assert result.dead_lettered_expected == result.dead_lettered_unexpected == 0
    assert result.acknowledged == len(events) + sum(s == 202 for s in observed.ingest_statuses)
    # The classifiers applied nothing while the database was down, though events kept coming.
    assert len(offsets_at_stop) == PARTITIONS
    assert offsets_at_end == offsets_at_stop, (offsets_at_stop, offsets_at_end)
    assert end_at_end > end_at_stop
    assert retries > 0
    assert observed.classifier_unready > 0
    # The ingest needs the database for no request: it kept acknowledging, and stayed ready.
    assert acked_during > 0
    assert observed.ingest_statuses
    assert set(observed.ingest_statuses) == {202}
    assert set(observed.ingest_ready) == {200}
