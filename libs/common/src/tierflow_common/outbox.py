"""Transactional outbox: enqueue records with the state change, relay them to Kafka afterwards.

One outbox row holds up to RECORDS_PER_ROW of the records one transaction enqueued (for one
producer), in order, as a MessagePack array of [topic, key, value, headers] (migration 0023):
a batch of a thousand changes is two rows to insert, select and delete, where it was a
thousand, each with its indexes, its JSONB headers to parse and print, and its dead tuple to
vacuum.

At-least-once on the wire: a crash between the broker's ack and the delete re-sends a batch.
Every record carries a stable CloudEvents id, so consumers dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_common.backoff import Backoff
from tierflow_common.contract.kafka_binding import EmittedEvent, KafkaRecord, encode_event
from tierflow_common.db.raw import raw_connection
from tierflow_common.kafka import make_producer, partition_for
from tierflow_common.metrics import OUTBOX_BACKLOG, OUTBOX_PUBLISHED
from tierflow_common.settings import KafkaSettings
from tierflow_common.trace_context import KAFKA_TRACEPARENT, TraceContext

log = structlog.get_logger(__name__)


# One record as a row's `records` array holds it: [topic, key, value, [[name, value], ...]].
StoredRecord = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
_encode_records = msgspec.msgpack.Encoder().encode
_decode_records = msgspec.msgpack.Decoder(list[StoredRecord]).decode

# A row holds at most this many records: a relay round (`batch` records) then takes whole rows
# and stays near its size, whatever one transaction enqueued.
RECORDS_PER_ROW = 500
_ENQUEUE = (
    "INSERT INTO outbox (producer, records, record_count) "
    "SELECT $1, u.records, u.n FROM unnest($2::bytea[], $3::integer[]) "
    "WITH ORDINALITY AS u(records, n, i) ORDER BY u.i"
)
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# The oldest rows up to `$2` records (at least one row, however many it holds); the running
# sum is over at most `$2` rows, each holding one record or more.
_SELECT = (
    "SELECT id, records FROM (SELECT id, records, record_count, "
    "sum(record_count) OVER (ORDER BY id) AS upto FROM (SELECT id, records, record_count "
    "FROM outbox WHERE producer = $1 ORDER BY id LIMIT $2) AS oldest) AS r "
    "WHERE upto - record_count < $2 ORDER BY id"
)
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
_BACKLOG = "SELECT coalesce(sum(record_count), 0) FROM outbox WHERE producer = $1"


async def backlog(raw: Any, producer: str) -> int:
    """Records `producer`'s outbox holds unpublished (`raw`: an asyncpg connection, or one
    of db/raw.py's): the relay's gauge, and what the bench and scripts wait to see drained."""
    return int(await raw.fetchval(_BACKLOG, producer) or 0)


def with_traces(
    items: Sequence[tuple[str, EmittedEvent | KafkaRecord]], traces: Mapping[str, TraceContext]
) -> list[tuple[str, EmittedEvent | KafkaRecord]]:
    """`items` with the trace context of their subject (a customer's: the event that caused
    them) where they carry none yet."""
    if not traces:
        return list(items)
    out: list[tuple[str, EmittedEvent | KafkaRecord]] = []
    for topic, item in items:
        trace = traces.get(item.subject) if isinstance(item, EmittedEvent) else None
        if trace is not None and isinstance(item, EmittedEvent) and item.trace is None:
            out.append((topic, replace(item, trace=trace)))
        else:
            out.append((topic, item))
    return out


async def enqueue(
    conn: AsyncConnection, producer: str, items: Sequence[tuple[str, EmittedEvent | KafkaRecord]]
) -> None:
    """Write (topic, event-or-record) pairs to the outbox inside the caller's transaction: one
    row per RECORDS_PER_ROW, the records in the order given, which is the order the relay
    publishes them in. An event's trace context becomes its record's CloudEvents
    distributed-tracing headers (`ce_traceparent`, `ce_tracestate`)."""
    if not items:
        return
    records: list[StoredRecord] = []
    for topic, item in items:
        if isinstance(item, EmittedEvent):
            record = encode_event(item)
            headers = record.headers
            if item.trace is not None:
                headers = with_trace_headers(headers, item.trace)
        else:
            record = item
            headers = record.headers
        records.append((topic, record.key, record.value, headers))
    rows = [records[i : i + RECORDS_PER_ROW] for i in range(0, len(records), RECORDS_PER_ROW)]
    raw = await raw_connection(conn)
    await raw.execute(
        _ENQUEUE, producer, [_encode_records(r) for r in rows], [len(r) for r in rows]
    )


def with_trace_headers(
    headers: list[tuple[str, bytes]], trace: TraceContext
) -> list[tuple[str, bytes]]:
    """A record's headers with its cause's trace context as the CloudEvents distributed-tracing
    extension (`ce_traceparent`, `ce_tracestate`), sorted as `binary_headers` sorts them; a
    record that carries its own keeps it."""
    if any(name == KAFKA_TRACEPARENT for name, _ in headers):
        return headers
    return sorted([*headers, *trace.kafka_headers()])


class OutboxRelay:
    """Publishes one producer's outbox rows in id order and deletes them once acked.

    A transaction-scoped advisory lock elects one relay per producer name across processes,
    which keeps per-customer order on the wire.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        kafka: KafkaSettings,
        *,
        producer: str,
        batch: int = 2_000,
        poll_interval: float = 0.2,
    ) -> None:
        self._engine = engine
        self._kafka_settings = kafka
        # aiokafka clients bind to the running loop, so the producer is created in run().
        self.kafka_producer: AIOKafkaProducer | None = None
        self._producer = producer
        self._batch = batch
        self._poll = poll_interval
        self._lock_key = zlib.crc32(f"tierflow-outbox:{producer}".encode())
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._backlog = OUTBOX_BACKLOG.labels(producer=producer)
        self._counted_at = -1.0

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    @property
    def connected(self) -> bool:
        return self.kafka_producer is not None

    async def _connect(self) -> AIOKafkaProducer | None:
        backoff = Backoff(first=0.2)
        while not self._stopping:
            producer = make_producer(self._kafka_settings)
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                await producer.stop()
                log.warning(
                    "broker_unreachable",
                    producer=self._producer,
                    error=str(exc),
                    retry_in=backoff.delay,
                )
                await backoff.wait()
        return None

    async def run(self) -> None:
        """Relay until stop(); then drain what is already committed, once, and disconnect."""
        producer = await self._connect()
        if producer is None:
            return
        self.kafka_producer = producer
        try:
            await self._loop()
            try:
                await self.relay_once()
            except Exception:
                log.warning("outbox_final_drain_failed", producer=self._producer)
        finally:
            self.kafka_producer = None
            await producer.stop()

    async def _loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                sent = await self.relay_once()
                backoff = 0.1
            except Exception:
                log.exception("outbox_relay_failed", producer=self._producer, retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self._batch:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._poll)

    async def _send_batches(
        self, kafka: AIOKafkaProducer, records: Sequence[StoredRecord]
    ) -> list[asyncio.Future[Any]]:
        """Send `records` (in the rows' order) as one record batch per partition (or more where
        one fills up), each partition's records in order; the futures resolve on the broker's
        acks.

        Building the batches here costs a fraction of a send() per record (which schedules
        and tracks each one), and they are partitioned as send() would: by the default
        partitioner over the record key (tierflow_common.kafka.partition_for)."""
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []

        async def submit(topic: str, partition: int) -> None:
            batch = open_batches.pop((topic, partition))
            batch.close()
            futures.append(await kafka.send_batch(batch, topic, partition=partition))

        for topic, key, value, headers in records:
            if topic not in partitions:
                partitions[topic] = sorted(await kafka.partitions_for(topic))
            every = partitions[topic]
            # As send() would: by key; a record without one on any partition.
            partition = random.choice(every) if key is None else partition_for(key, every)
            batch = open_batches.get((topic, partition))
            if batch is not None:
                added = batch.append(key=key, value=value, timestamp=None, headers=headers)
                if added is not None:
                    continue
                await submit(topic, partition)  # full: send it, start the next
            batch = open_batches[(topic, partition)] = kafka.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"an outbox record for {topic} does not fit in a record batch")
        for topic, partition in list(open_batches):
            await submit(topic, partition)
        return futures

    async def relay_once(self) -> int:
        """Publish up to one batch; return how many records were acknowledged and removed."""
        kafka = self.kafka_producer
        if kafka is None:
            return 0
        async with self._engine.begin() as conn:
            # Straight through asyncpg (db/raw.py): one prepared statement each, whatever the
            # round's size (an IN list of the round's ids was a new statement to parse and
            # plan at almost every round), and records instead of SQLAlchemy rows.
            raw = await raw_connection(conn)
            if not await raw.fetchval(_TRY_LOCK, self._lock_key):
                self._backlog.set(0)  # another process relays this producer and reports it
                return 0
            rows = await raw.fetch(_SELECT, self._producer, self._batch)
            records = [r for row in rows for r in _decode_records(row["records"])]
            await self._measure_backlog(raw, len(records))
            if not rows:
                return 0
            await asyncio.gather(*await self._send_batches(kafka, records))
            await raw.execute(_DELETE, [row["id"] for row in rows])
        OUTBOX_PUBLISHED.labels(producer=self._producer).inc(len(records))
        self._backlog.dec(len(records))
        return len(records)

    async def _measure_backlog(self, raw: Any, selected: int) -> None:
        """Set the backlog gauge (records) before publishing (so a broker that refuses the
        batch leaves it showing). A round that selected less than a batch saw the whole
        backlog; behind that, the records are counted, at most once a second (a count walks
        the index)."""
        if selected < self._batch:
            self._backlog.set(selected)
            return
        now = time.monotonic()
        if now - self._counted_at < 1.0:
            return
        self._counted_at = now
        self._backlog.set(await backlog(raw, self._producer))
