"""The operations library (tierflow_common.operations) on the real broker and PostgreSQL:
lag against what the classifier really applied, topic search, dead letters and redrive."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from tests.integration.helpers import classifier_client, eventually, produce, purchase_event
from tests.support import ROOT, plain_producer, unique
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.db.engine import create_engine
from tierflow_common.kafka import make_consumer, partition_for
from tierflow_common.operations import (
    PartitionLag,
    consumer_lag,
    dead_letters,
    redrive,
    search_topic,
    topic_ends,
)
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

pytestmark = pytest.mark.integration


@asynccontextmanager
async def classifier(
    kafka: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    async with classifier_client(
        kafka, database, topics, consumer=ConsumerSettings(max_batch=20)
    ) as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        yield client


def partition_of(key: str, topics: TopicSettings) -> int:
    return partition_for(key.encode(), list(range(topics.partitions)))


def customers_on_every_partition(tag: str, topics: TopicSettings, per: int) -> list[str]:
    """Customer ids, `per` of them on each partition."""
    found: dict[int, list[str]] = {p: [] for p in range(topics.partitions)}
    n = 0
    while any(len(v) < per for v in found.values()):
        cid = f"{tag}-c{n}"
        n += 1
        if len(found[partition_of(cid, topics)]) < per:
            found[partition_of(cid, topics)].append(cid)
    return [c for v in found.values() for c in v]


async def lag_of(
    kafka: KafkaSettings, topics: TopicSettings, database: DatabaseSettings, topic: str
) -> list[PartitionLag]:
    found = await consumer_lag(kafka=kafka, topics=topics, database=database)
    return [p for p in found if p.topic == topic and p.group.startswith("classifier_")]


async def test_lag_is_what_was_produced_minus_what_the_classifier_applied(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    tag = unique("lag")
    people = customers_on_every_partition(tag, topics, per=2)
    first = [purchase_event(f"{tag}-a{i}", people[i % len(people)], "10.00") for i in range(40)]
    async with classifier(kafka_settings, database, topics):
        await produce(kafka_settings, topics.customer_events, first)
        applied = await eventually(
            lambda: lag_of(kafka_settings, topics, database, topics.customer_events),
            lambda ps: (
                len(ps) == topics.partitions
                and sum(p.end for p in ps) == 40
                and all(p.lag == 0 for p in ps)
            ),
            timeout=30,
            what="the classifier caught up",
        )
    assert {p.source for p in applied} == {"database"}
    # The classifier is stopped: what is produced now is lag, partition by partition.
    later = [purchase_event(f"{tag}-b{i}", people[i % 5], "10.00") for i in range(23)]
    await produce(kafka_settings, topics.customer_events, later)
    behind = Counter(partition_of(e.subject, topics) for e in later)
    before = Counter(partition_of(e.subject, topics) for e in first)
    lag = await lag_of(kafka_settings, topics, database, topics.customer_events)
    assert {p.partition: p.lag for p in lag} == {p: behind[p] for p in range(topics.partitions)}
    assert {p.partition: p.committed for p in lag} == {
        p: before[p] for p in range(topics.partitions)
    }
    assert {p.partition: p.end for p in lag} == {
        p: before[p] + behind[p] for p in range(topics.partitions)
    }
    # On a caller's own engine (the console keeps one) the answer is the same.
    engine = create_engine(database)
    try:
        on_engine = await consumer_lag(kafka=kafka_settings, topics=topics, engine=engine)
    finally:
        await engine.dispose()
    assert [
        p
        for p in on_engine
        if p.topic == topics.customer_events and p.group.startswith("classifier_")
    ] == lag
    ends = await topic_ends(kafka=kafka_settings, topics=topics)
    assert ends.ends[topics.customer_events] == 63

    # A group that stores no offsets of its own is measured by the broker's committed ones.
    group = unique("plain")
    plain = make_consumer(kafka_settings, group_id=group)
    await plain.start()
    try:
        tp = TopicPartition(topics.customer_events, 0)
        plain.assign([tp])
        await plain.commit({tp: 1})
    finally:
        await plain.stop()
    found = await consumer_lag(
        kafka=kafka_settings, topics=topics, database=database, groups=[group]
    )
    zero = [p for p in found if p.partition == 0]
    assert [(p.source, p.committed, p.lag) for p in zero] == [
        ("broker", 1, before[0] + behind[0] - 1)
    ]


async def test_search_finds_exactly_the_records_asked_for(
    kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    topic = topics.customer_events
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    events: list[tuple[EmittedEvent, datetime]] = []
    for i in range(30):
        at = base + timedelta(minutes=i)
        kind = "purchase" if i % 3 else "feedback"
        data: dict[str, Any] = (
            {"order_id": f"o{i}", "amount": "1.00", "currency": "USD"}
            if kind == "purchase"
            else {"satisfaction": 4}
        )
        event = EmittedEvent(f"e{i}", kind, "shop", f"cust-{i % 4}", at, data)
        events.append((event, at))
    producer = plain_producer(kafka_settings)
    await producer.start()
    try:
        for event, at in events:
            rec = encode_event(event)
            await producer.send_and_wait(
                topic,
                value=rec.value,
                key=rec.key,
                headers=rec.headers,
                timestamp_ms=int(at.timestamp() * 1000),
            )
    finally:
        await producer.stop()

    def ids(found: list[Any]) -> list[str]:
        return [r.headers["ce_id"] for r in found]

    kw: dict[str, Any] = {"kafka": kafka_settings, "limit": 100}
    by_key = await search_topic(topic, key="cust-1", **kw)
    expected = [e.id for e, _ in reversed(events) if e.subject == "cust-1"]
    assert ids(by_key) == expected  # newest first
    assert {r.partition for r in by_key} == {partition_of("cust-1", topics)}
    assert (by_key[0].value, by_key[0].key) == (events[29][0].data, "cust-1")

    one = await search_topic(topic, event_id="e17", **kw)
    assert ids(one) == ["e17"]
    assert one[0].timestamp == events[17][1]

    feedback = await search_topic(topic, type="feedback", newest_first=False, **kw)
    assert ids(feedback) == [e.id for e, _ in events if e.type == "feedback"]

    since, until = base + timedelta(minutes=10), base + timedelta(minutes=20)
    window = await search_topic(topic, since=since, until=until, newest_first=False, **kw)
    assert ids(window) == [f"e{i}" for i in range(10, 20)]
    both = await search_topic(topic, key="cust-2", since=since, until=until, **kw)
    assert ids(both) == [f"e{i}" for i in range(19, 9, -1) if i % 4 == 2]
    newest = await search_topic(topic, kafka=kafka_settings, limit=3)
    assert ids(newest) == ["e29", "e28", "e27"]
    assert await search_topic(topic, event_id="nope", **kw) == []


RATES = "rates:            # 1 unit of the currency = rate units of base_currency\n"


async def purchases(client: httpx.AsyncClient, cid: str) -> int | None:
    resp = await client.get(f"/v1/customers/{cid}")
    return None if resp.status_code == 404 else int(resp.json()["features"]["purchases_lifetime"])


async def test_a_poison_event_is_dead_lettered_then_redriven_once_after_the_fix(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    cid = unique("krona")
    poison = purchase_event(f"{cid}-o1", cid, "1500", currency="SEK")
    async with classifier(kafka_settings, database, topics) as client:
        await produce(kafka_settings, topics.customer_events, [poison])
        letters = await eventually(
            lambda: dead_letters(topics.classifier_dlq, limit=10, kafka=kafka_settings),
            lambda found: len(found) == 1,
            what="the dead letter",
        )
        (letter,) = letters
        assert letter.field == "data.currency"
        assert "no exchange rate for SEK" in letter.reason
        assert letter.source_topic == topics.customer_events
        assert letter.source_partition == partition_of(cid, topics)
        (original,) = await search_topic(
            topics.customer_events, event_id=poison.id, kafka=kafka_settings
        )
        assert letter.source_offset == original.offset
        assert letter.original == poison.data
        assert letter.headers["ce_id"] == poison.id
        assert not any(k.startswith("dlq_") for k in letter.headers)
        assert letter.key == cid
        assert (
            await dead_letters(topics.classifier_dlq, after=letter.cursor, kafka=kafka_settings)
            == []
        )
        assert await purchases(client, cid) is None

        # The fix: a rule set that knows the krona, activated without a restart.
        text = (ROOT / "config" / "classifier.yaml").read_text()
        assert RATES in text
        assert "SEK:" not in text
        fixed = text.replace(RATES, RATES + '  SEK: "0.095"\n')
        yaml = {"Content-Type": "application/yaml"}
        checked = await client.post("/v1/rules:simulate", content=fixed, headers=yaml)
        assert checked.status_code == 200, checked.text
        active = (await client.get("/v1/rules")).json()["active"]["version"]
        activated = await client.post(
            "/v1/rules:activate",
            json={"version": checked.json()["candidate_version"], "expected_active": active},
        )
        assert activated.status_code == 200, activated.text
        await eventually(
            lambda: client.get("/v1/rules"),
            lambda r: r.json()["version"] == checked.json()["candidate_version"],
            what="the fixed rule set in force",
        )

        result = await redrive(
            topics.classifier_dlq,
            partition=letter.partition,
            offset=letter.offset,
            kafka=kafka_settings,
        )
        assert (result.sent, result.targets) == (1, [topics.customer_events])
        await eventually(lambda: purchases(client, cid), lambda n: n == 1, what="applied once")

        # Redriving again (all of the DLQ) changes nothing: the ledger knows the event.
        again = await redrive(topics.classifier_dlq, all=True, kafka=kafka_settings)
        assert again.sent == 1
        await eventually(
            lambda: lag_of(kafka_settings, topics, database, topics.customer_events),
            lambda ps: sum(p.end for p in ps) == 3 and all(p.lag == 0 for p in ps),
            what="the second redrive consumed",
        )
        assert await purchases(client, cid) == 1
        assert len(await dead_letters(topics.classifier_dlq, kafka=kafka_settings)) == 1
        history = (await client.get(f"/v1/customers/{cid}/history")).json()["changes"]
        causes = {c["cause"] for c in history}
        assert causes == {f"event:shop/{poison.id}"}
