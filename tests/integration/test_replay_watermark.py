"""The replay clock against the real broker and PostgreSQL: the watermark waits for every
assigned partition, and a partition with nothing to read does not hold it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.helpers import eventually, purchase_event
from tests.integration.test_population_refresh import classifier
from tests.support import plain_producer
from tierflow_classifier.adapters import repository
from tierflow_common.contract import encode_event
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration

T0 = datetime(2021, 3, 1, 12, tzinfo=UTC)


async def test_the_watermark_is_unknown_until_every_registered_partition_has_a_time(
    database: DatabaseSettings,
) -> None:
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            unread = await repository.register_partitions(conn, ["e:0", "e:1", "e:2"])
            assert sorted(unread) == ["e:0", "e:1", "e:2"]
            assert await repository.read_watermark(conn) is None
            await repository.advance_watermark(conn, "e:0", T0 + timedelta(days=9))
            # Partition 0 may be at the end of the log while 1 and 2 have not started.
            assert await repository.read_watermark(conn) is None
            await repository.advance_watermark(conn, "e:1", T0)
            assert await repository.read_watermark(conn) is None
            # Re-registering (a rebalance) keeps the times already reached.
            assert await repository.register_partitions(conn, ["e:0", "e:1", "e:2"]) == ["e:2"]
            await repository.forget_unread_partitions(conn, ["e:0", "e:2"])
            assert await repository.read_watermark(conn) == T0
    finally:
        await engine.dispose()


async def test_a_replay_over_a_topic_with_empty_partitions_reaches_its_last_event_time(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    events = [
        purchase_event(f"o{n}", "c-only", "12.50", time=T0 + timedelta(days=7 * n))
        for n in range(5)
    ]
    producer = plain_producer(kafka_settings)
    await producer.start()
    try:
        for event in events:  # every record on partition 1; partitions 0 and 2 stay empty
            rec = encode_event(event)
            await producer.send_and_wait(
                topics.customer_events,
                value=rec.value,
                key=rec.key,
                headers=rec.headers,
                partition=1,
            )
    finally:
        await producer.stop()
    engine = create_engine(database)
    try:
        async with classifier(
            kafka_settings, database, topics, clock="event_time", population_settle_s=0.5
        ) as client:

            async def bought() -> int:
                resp = await client.get("/v1/customers/c-only")
                return resp.json()["features"]["purchases_lifetime"] if resp.is_success else 0

            await eventually(bought, lambda n: n == len(events))

            async def watermark() -> datetime | None:
                async with engine.connect() as conn:
                    return await repository.read_watermark(conn)

            assert await eventually(watermark, lambda w: w is not None) == events[-1].time
    finally:
        await engine.dispose()
