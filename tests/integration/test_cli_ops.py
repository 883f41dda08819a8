"""`tierflow lag`, `tierflow tail` and `tierflow dlq list|show|redrive` as an operator runs
them (the installed command, in its own process) against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from sqlalchemy import insert

from tests.integration.helpers import eventually, produce, purchase_event
from tests.support import unique
from tierflow_common.consumer import DeadLetter, dead_letter_record
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import consumer_offsets
from tierflow_common.kafka import make_consumer, make_producer
from tierflow_common.operations import search_topic
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration
TIERFLOW = str(Path(sys.executable).with_name("tierflow"))


async def tierflow(
    kafka: KafkaSettings, database: DatabaseSettings, topics: TopicSettings, *args: str
) -> tuple[int, str, str]:
    env = {
        **os.environ,
        **topics.as_env(),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DATABASE_URL": database.database_url.get_secret_value(),
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        TIERFLOW, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_lag_tail_and_dead_letters_from_the_command_line(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    cid = unique("cli")
    events = [purchase_event(f"{cid}-o{i}", cid, "5.00") for i in range(3)]
    await produce(kafka_settings, topics.customer_events, events)
    (first,) = await eventually(
        lambda: search_topic(topics.customer_events, event_id=events[0].id, kafka=kafka_settings),
        lambda found: len(found) == 1,
    )
    tp = TopicPartition(topics.customer_events, first.partition)

    # A group that has applied the first of the three (its offset stored with its state).
    group = unique("applied")
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            # As a service stores it with its state (the columns every version has).
            await conn.execute(
                insert(consumer_offsets).values(
                    group_id=group,
                    topic=tp.topic,
                    partition=tp.partition,
                    next_offset=first.offset + 1,
                )
            )
    finally:
        await engine.dispose()
    code, out, _ = await tierflow(
        kafka_settings, database, topics, "lag", "--group", group, "--json"
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    mine = [r for r in rows if r["partition"] == first.partition]
    assert [(r["committed"], r["end"], r["lag"], r["source"]) for r in mine] == [
        (first.offset + 1, first.offset + 3, 2, "database")
    ]

    code, out, _ = await tierflow(
        kafka_settings, database, topics, "tail", "customer_events", "--customer", cid
    )
    assert code == 0
    assert [line.split()[4] for line in out.splitlines()] == [e.id for e in events]

    # A dead letter as the consumers write it, of the second event.
    reader = make_consumer(kafka_settings, group_id=None)
    await reader.start()
    try:
        reader.assign([tp])
        reader.seek(tp, first.offset + 1)
        polled = await reader.getmany(tp, timeout_ms=5000, max_records=1)
    finally:
        await reader.stop()
    (original,) = polled[tp]
    letter = dead_letter_record(
        DeadLetter(original, "data.amount: not accepted", "data.amount"), "classifier_x"
    )
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topics.classifier_dlq, value=letter.value, key=letter.key, headers=letter.headers
        )
    finally:
        await producer.stop()
    where = f"{sent.partition}:{sent.offset}"

    code, out, _ = await tierflow(kafka_settings, database, topics, "dlq", "list", "classifier")
    assert code == 0
    (line,) = out.splitlines()
    assert line.startswith(where)
    assert events[1].id in line
    assert "data.amount: data.amount: not accepted" in line
    code, out, _ = await tierflow(
        kafka_settings, database, topics, "dlq", "show", "classifier", where
    )
    shown = json.loads(out)
    assert (shown["source_topic"], shown["source_offset"]) == (
        topics.customer_events,
        original.offset,
    )
    assert shown["original"] == events[1].data

    code, out, _ = await tierflow(
        kafka_settings, database, topics, "dlq", "redrive", "classifier", where
    )
    assert code == 0
    assert out.strip() == f"redriven 1 to {topics.customer_events}"
    again = await eventually(
        lambda: search_topic(topics.customer_events, event_id=events[1].id, kafka=kafka_settings),
        lambda found: len(found) == 2,
    )
    assert {json.dumps(r.value) for r in again} == {json.dumps(events[1].data)}
    assert not any(k.startswith("dlq_") for r in again for k in r.headers)

    code, _, err = await tierflow(kafka_settings, database, topics, "dlq", "redrive", "classifier")
    assert code == 2
    assert "PARTITION:OFFSET or --all" in err
