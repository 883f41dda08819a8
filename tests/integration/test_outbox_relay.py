"""The outbox relay on the real broker: what a downstream consumer sees of a large backlog."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from tests.integration.helpers import eventually
from tests.support import plain_producer, unique
from tierflow_common.contract.kafka_binding import KafkaRecord
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import outbox
from tierflow_common.kafka import make_consumer
from tierflow_common.outbox import RECORDS_PER_ROW, OutboxRelay, enqueue
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration

RECORDS = 3_000
KEYS = 37


async def read_all(
    kafka: KafkaSettings, topic: str, expect: int
) -> dict[int, list[tuple[bytes, bytes, dict[str, bytes]]]]:
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[int, list[tuple[bytes, bytes, dict[str, bytes]]]] = defaultdict(list)

        async def read() -> int:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                out[tp.partition] += [
                    (r.key or b"", r.value or b"", {k: bytes(v) for k, v in r.headers})
                    for r in records
                ]
            return sum(len(v) for v in out.values())

        await eventually(read, lambda n: n >= expect, timeout=30, what=f"{expect} records")
        return out
    finally:
        await consumer.stop()


async def test_a_backlog_arrives_once_in_order_per_key_on_the_partition_send_would_choose(
    database: DatabaseSettings, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    engine = create_engine(database)
    topic = topics.customer_events
    # 1 KB values: several record batches per partition.
    items = [
        (
            topic,
            KafkaRecord(
                key=f"customer-{i % KEYS}".encode(),
                value=f"{i:06d}".encode() + b"." * 1024,
                headers=[("n", str(i).encode()), ("ce_id", f"id-{i}".encode())],
            ),
        )
        for i in range(RECORDS)
    ]
    try:
        async with engine.begin() as conn:
            await enqueue(conn, "relay-test", items)
        relay = OutboxRelay(engine, kafka_settings, producer="relay-test", batch=5_000)
        task = asyncio.create_task(relay.run())

        async def backlog() -> int:
            async with engine.connect() as conn:
                return int(await conn.scalar(select(func.count()).select_from(outbox)) or 0)

        await eventually(backlog, lambda n: n == 0, timeout=30, what="outbox drained")
        relay.stop()
        await task

        got = await read_all(kafka_settings, topic, RECORDS)
        assert sum(len(v) for v in got.values()) == RECORDS
        seen = [int(h["n"]) for records in got.values() for _, _, h in records]
        assert sorted(seen) == list(range(RECORDS))  # each once
        partition_of: dict[bytes, int] = {}
        for partition, records in got.items():
            per_key: dict[bytes, list[int]] = defaultdict(list)
            for key, value, headers in records:
                assert value[:6] == headers["n"].decode().zfill(6).encode()
                assert partition_of.setdefault(key, partition) == partition
                per_key[key].append(int(headers["n"]))
            for numbers in per_key.values():
                assert numbers == sorted(numbers)  # in enqueue order

        # The same keys sent one by one by a plain producer land on the same partitions.
        producer = plain_producer(kafka_settings)  # aiokafka's default partitioner
        await producer.start()
        try:
            for key, partition in partition_of.items():
                sent = await (await producer.send(topics.tier_changed, key=key, value=b"x"))
                assert sent.partition == partition, key
        finally:
            await producer.stop()
    finally:
        await engine.dispose()


def backlog_gauge(producer: str) -> float | None:
    return REGISTRY.get_sample_value("tierflow_outbox_backlog", {"producer": producer})


async def test_the_backlog_gauge_counts_down_to_zero_as_the_relay_publishes(
    database: DatabaseSettings, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    """tierflow_outbox_backlog (the console's and the Grafana dashboard's outbox backlog) is
    the number of records still unpublished after each round, whether counted or not (the
    records one transaction enqueued are taken in rows of RECORDS_PER_ROW)."""
    engine = create_engine(database)
    producer = unique("backlog")
    items = [
        (topics.customer_events, KafkaRecord(key=b"k", value=str(i).encode(), headers=[]))
        for i in range(5 * RECORDS_PER_ROW)
    ]
    relay = OutboxRelay(engine, kafka_settings, producer=producer, batch=2 * RECORDS_PER_ROW)
    relay.kafka_producer = plain_producer(kafka_settings)
    await relay.kafka_producer.start()
    try:
        async with engine.begin() as conn:
            await enqueue(conn, producer, items)
        seen = []
        for _ in range(4):
            await relay.relay_once()
            seen.append(backlog_gauge(producer))
        assert seen == [3 * RECORDS_PER_ROW, RECORDS_PER_ROW, 0, 0]
    finally:
        await relay.kafka_producer.stop()
        await engine.dispose()
