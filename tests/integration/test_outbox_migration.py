"""Migration 0023 on real rows: records pending in the former one-row-per-record outbox are
published after the upgrade exactly as the former relay would have published them (order,
key, value, headers, the trace context as `ce_traceparent`), and a downgrade splits the new
rows back into one row per record."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from alembic import command
from sqlalchemy import text

from tests.integration.helpers import database_at
from tests.integration.test_outbox_relay import read_all
from tests.support import Servers, plain_producer
from tierflow_common.contract.kafka_binding import KafkaRecord
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import alembic_config, upgrade_head_async
from tierflow_common.outbox import OutboxRelay, enqueue
from tierflow_common.settings import KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FORMER = (
    "INSERT INTO outbox (producer, topic, key, value, headers, trace_context) "
    "VALUES ('migrated', :topic, :key, :value, CAST(:headers AS jsonb), CAST(:trace AS jsonb))"
)


async def test_pending_rows_of_the_former_outbox_are_published_as_before(
    servers: Servers, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    database = await database_at(servers, "0022_customers_search_indexes")
    await asyncio.to_thread(command.upgrade, alembic_config(database), "0016_trace_context")
    topic = topics.customer_events
    pending = [
        (b"c-1", b"first", [["ce_id", "a"], ["content-type", "application/json"]], None),
        (
            b"c-1",
            b"second",
            [["ce_id", "b"]],
            orjson.dumps({"traceparent": TRACEPARENT, "tracestate": "k=v"}).decode(),
        ),
        (b"c-2", b"third", [], orjson.dumps({"traceparent": TRACEPARENT}).decode()),
    ]
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            for key, value, headers, trace in pending:
                await conn.execute(
                    text(FORMER),
                    {
                        "topic": topic,
                        "key": key,
                        "value": value,
                        "headers": orjson.dumps(headers).decode(),
                        "trace": trace,
                    },
                )
        await upgrade_head_async(database)
        async with engine.connect() as conn:
            counts = (await conn.execute(text("SELECT record_count FROM outbox"))).scalars()
            assert list(counts) == [1, 1, 1]
        relay = OutboxRelay(engine, kafka_settings, producer="migrated")
        relay.kafka_producer = plain_producer(kafka_settings)
        await relay.kafka_producer.start()
        try:
            assert await relay.relay_once() == 3
        finally:
            await relay.kafka_producer.stop()
    finally:
        await engine.dispose()
    published = [
        r for records in (await read_all(kafka_settings, topic, 3)).values() for r in records
    ]
    by_value = {value: (key, headers) for key, value, headers in published}
    assert by_value[b"first"] == (b"c-1", {"ce_id": b"a", "content-type": b"application/json"})
    assert by_value[b"second"] == (
        b"c-1",
        {"ce_id": b"b", "ce_traceparent": TRACEPARENT.encode(), "ce_tracestate": b"k=v"},
    )
    assert by_value[b"third"] == (b"c-2", {"ce_traceparent": TRACEPARENT.encode()})
    # One key, one partition: c-1's records in the order they were written.
    c1 = [value for key, value, _ in published if key == b"c-1"]
    assert c1 == [b"first", b"second"]


async def test_a_downgrade_splits_each_row_back_into_one_row_per_record(
    servers: Servers, topics: TopicSettings
) -> None:
    database = await database_at(servers, "0022_customers_search_indexes")
    await upgrade_head_async(database)
    engine = create_engine(database)
    items = [
        (topics.customer_events, KafkaRecord(key=f"c-{i}".encode(), value=b"v%d" % i, headers=[]))
        for i in range(3)
    ]
    try:
        async with engine.begin() as conn:
            await enqueue(conn, "split", items)
            await enqueue(conn, "split", [(topics.customer_events, KafkaRecord(b"c-9", b"v9", []))])
        await asyncio.to_thread(
            command.downgrade, alembic_config(database), "0022_customers_search_indexes"
        )
        async with engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT key, value, headers FROM outbox ORDER BY id"))
            ).all()
    finally:
        await engine.dispose()
    assert [(bytes(k), bytes(v), h) for k, v, h in rows] == [
        (b"c-0", b"v0", []),
        (b"c-1", b"v1", []),
        (b"c-2", b"v2", []),
        (b"c-9", b"v9", []),
    ]
