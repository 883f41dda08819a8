"""Raw aiokafka producing and consuming: the broker baselines and the topic pre-loaders.

Records are built exactly as the pipeline builds them (CloudEvents binary mode, same headers), so
a raw figure and a pipeline figure move the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition

from tierflow_common.contract import (
    CLASSIFICATION_CHANGED_TYPE,
    ClassificationChangedData,
    EmittedEvent,
    encode_event,
)
from tierflow_common.contract.kafka_binding import KafkaRecord
from tierflow_common.kafka import make_consumer, make_producer
from tierflow_common.settings import KafkaSettings

RecordFn = Callable[[int], KafkaRecord]
# Pre-loaded events are at most 1,000,000 s (11.6 days) apart, starting 20 days before today:
# inside the ledger's retention window (30 days by default), so every event is claimed in the
# ledger as it would be in production, and recent enough for the rolling windows.
BASE_TIME = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
    days=20
)


def purchase_record(prefix: str, i: int, customers: int) -> KafkaRecord:
    """Purchase event i of a pre-loaded topic: customers drawn at random (seeded by i)."""
    rng = random.Random(i)
    customer = f"c{rng.randrange(customers)}"
    amount = f"{rng.randrange(500, 200_000) / 100:.2f}"
    when = (BASE_TIME + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    value = f'{{"order_id":"{i}","amount":"{amount}","currency":"USD"}}'.encode()
    return KafkaRecord(
        key=customer.encode(),
        value=value,
        headers=[
            ("ce_id", f"{prefix}-{i}".encode()),
            ("ce_source", b"bench"),
            ("ce_specversion", b"1.0"),
            ("ce_subject", customer.encode()),
            ("ce_time", when),
            ("ce_type", b"purchase"),
            ("content-type", b"application/json"),
        ],
    )


def change_record(prefix: str, i: int) -> KafkaRecord:
    """A first value-tier assignment (none -> regular) of a new customer: one care action."""
    customer = f"{prefix}-c{i}"
    at = BASE_TIME + timedelta(seconds=i)
    data = ClassificationChangedData(
        customer_id=customer,
        dimension="value_tier",
        from_label=None,
        to_label="regular",
        reason="net spend 129.90 USD >= 0 and 1 purchase(s) >= 1",
        explanation={"rule": "regular", "net_spend_lifetime": "129.90", "purchases_lifetime": 1},
        cause=f"event:bench/{prefix}-{i}",
        effective_at=at,
        rule_set_version="bench",
    )
    return encode_event(
        EmittedEvent(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}/{i}")),
            type=CLASSIFICATION_CHANGED_TYPE,
            source="tierflow/classifier",
            subject=customer,
            time=at,
            data=data.model_dump(mode="json", by_alias=True),
        )
    )


def make_records(kind: str, prefix: str, customers: int) -> RecordFn:
    if kind == "purchase":
        return lambda i: purchase_record(prefix, i, customers)
    return lambda i: change_record(prefix, i)


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterator[KafkaRecord],
    *,
    linger_ms: int = 2,
    max_batch_size: int = 256 * 1024,
) -> tuple[int, float]:
    """Send every record with acks=all; return (count, seconds from first send to last ack)."""
    producer = make_producer(
        KafkaSettings(bootstrap_servers=bootstrap),
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
    )
    await producer.start()
    try:
        count = 0
        pending: list[asyncio.Future[object]] = []
        t0 = time.perf_counter()
        for rec in records:
            pending.append(
                await producer.send(topic, value=rec.value, key=rec.key, headers=rec.headers)
            )
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return count, time.perf_counter() - t0
    finally:
        await producer.stop()


def _preload_entry(
    bootstrap: str, topic: str, kind: str, prefix: str, *, customers: int, part: range
) -> None:
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415

        uvloop.install()
    fn = make_records(kind, prefix, customers)
    asyncio.run(
        produce(
            bootstrap,
            topic,
            (fn(i) for i in part),
            linger_ms=20,
            max_batch_size=1024 * 1024,
        )
    )


def preload(
    bootstrap: str,
    topic: str,
    *,
    kind: str,
    count: int,
    prefix: str,
    customers: int = 1,
    processes: int = 2,
) -> float:
    """Fill a topic with `count` records from several producer processes; return seconds."""
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    procs = [
        ctx.Process(
            target=_preload_entry,
            args=(bootstrap, topic, kind, prefix),
            kwargs={"customers": customers, "part": range(k, count, processes)},
            daemon=True,
        )
        for k in range(processes)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"pre-loading {topic} failed (exit code {proc.exitcode})")
    return time.perf_counter() - t0


async def consume_rate(
    bootstrap: str, topic: str, *, limit: int, max_seconds: float
) -> tuple[int, float]:
    """Read a topic from the beginning as fast as aiokafka can; return (records, seconds)."""
    consumer = make_consumer(
        KafkaSettings(bootstrap_servers=bootstrap),
        group_id=None,
        # aiokafka's own fetch wait: this measures the raw client, not tierflow's tuning.
        fetch_max_wait_ms=500,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = 0
        t0 = time.perf_counter()
        while count < limit and time.perf_counter() - t0 < max_seconds:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            count += sum(len(recs) for recs in batch.values())
        return count, time.perf_counter() - t0
    finally:
        await consumer.stop()
