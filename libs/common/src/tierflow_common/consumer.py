"""A Kafka consumer whose offsets of record live in PostgreSQL beside the state they produced.

Each polled batch is applied by a handler inside one database transaction that also stores the
next offsets and enqueues every outgoing record (outbox); with lanes, a batch is split into parts
over disjoint partitions, each such a transaction, applied at once (tierflow_common/lanes.py).
A crash at any point therefore either keeps a part whole (state + offsets + outputs of its
partitions) or none of it; on partition assignment the consumer claims the partitions and
seeks to the stored offsets. The offsets are fenced by that claim (tierflow_common/fencing.py):
a member whose partitions moved while it was paused gets its write refused, and the batch rolls
back with it. Records the handler cannot apply go to the dead-letter topic with the reason,
through the same outbox, so a poison record never blocks its partition.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_common.backoff import Backoff
from tierflow_common.contract.kafka_binding import EmittedEvent, KafkaRecord
from tierflow_common.db.offsets import claim_partitions, store_offsets
from tierflow_common.fencing import OffsetsFenced
from tierflow_common.kafka import make_consumer
from tierflow_common.lanes import split_lanes
from tierflow_common.logging import error_fields
from tierflow_common.metrics import (
    ASSIGNED_PARTITIONS,
    BATCH_SECONDS,
    CONSUMED,
    DEAD_LETTERED,
    LOG_LOSS,
)
from tierflow_common.outbox import enqueue
from tierflow_common.settings import ConsumerSettings, KafkaSettings
from tierflow_common.transient import is_transient

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    reason: str
    field: str | None = None


@dataclass
class BatchOutcome:
    """What a handler decided for a batch: records to emit and records to dead-letter."""

    emit: list[tuple[str, EmittedEvent | KafkaRecord]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0


Handler = Callable[[AsyncConnection, Sequence[Record]], Awaitable[BatchOutcome]]


class _Verdict(enum.Enum):
    DONE = "done"  # applied and committed (or dead-lettered)
    AGAIN = "again"  # partly fenced: the partitions still held go again at once
    LATER = "later"  # a transient error: again after a backoff


class PartitionWatcher(Protocol):
    """Told which partitions this member reads, and which of them it has read to the end."""

    async def assigned(self, conn: AsyncConnection, partitions: frozenset[TopicPartition]) -> None:
        """Inside the transaction that reads the stored offsets for a new assignment."""

    async def caught_up(self, partitions: frozenset[TopicPartition]) -> None:
        """Every record of these partitions up to the log end has been applied (or skipped)."""


def dead_letter_record(dead: DeadLetter, group_id: str) -> KafkaRecord:
    """The original key, value and headers, plus `dlq_*` headers: where it came from and why."""
    rec = dead.record
    headers = [(k, bytes(v)) for k, v in (rec.headers or ())]
    headers += [
        ("dlq_reason", dead.reason.encode()),
        ("dlq_field", (dead.field or "").encode()),
        ("dlq_consumer_group", group_id.encode()),
        ("dlq_source_topic", rec.topic.encode()),
        ("dlq_source_partition", str(rec.partition).encode()),
        ("dlq_source_offset", str(rec.offset).encode()),
    ]
    return KafkaRecord(key=rec.key or b"", value=rec.value or b"", headers=headers)


def drop_redelivered(
    batch: dict[TopicPartition, list[Record]], expected: dict[TopicPartition, int]
) -> tuple[dict[TopicPartition, list[Record]], list[Record]]:
    """Split a polled batch into records not yet seen (offset at or past the partition's
    expected next offset, each once) and copies of records already handed out."""
    fresh: dict[TopicPartition, list[Record]] = {}
    skipped: list[Record] = []
    for tp, records in batch.items():
        nxt = expected.get(tp, 0)
        kept: list[Record] = []
        for record in records:
            if record.offset < nxt:
                skipped.append(record)
                continue
            kept.append(record)
            nxt = record.offset + 1
        if kept:
            fresh[tp] = kept
    return fresh, skipped


def _extend(
    batch: dict[TopicPartition, list[Record]], more: dict[TopicPartition, list[Record]]
) -> None:
    """Append a later poll's records; a partition's new records follow those already in it."""
    for tp, records in more.items():
        batch.setdefault(tp, []).extend(records)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: StatefulConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the in-flight batch commit before the partitions move to another member.
        async with self._owner.batch_lock:
            self._owner.released(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # Read the stored offsets only after an in-flight batch has committed its own: read
        # before, they would send the consumer back over records it has just applied.
        async with self._owner.batch_lock:
            await self._owner.seek_to_stored(assigned)


class StatefulConsumer:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        kafka: KafkaSettings,
        settings: ConsumerSettings,
        group_id: str,
        topics: Sequence[str],
        dlq_topic: str,
        producer_name: str,
        handler: Handler,
        on_committed: Callable[[], None] | None = None,
        watcher: PartitionWatcher | None = None,
        lanes: int = 1,
    ) -> None:
        """`lanes`: transactions applied at once, over disjoint partitions of a batch (more
        than one only for a handler that keeps no state of its own between calls)."""
        self._engine = engine
        self._lanes = lanes
        self._watcher = watcher
        self._kafka = kafka
        self._settings = settings
        self.group_id = group_id
        self._topics = list(topics)
        self._dlq_topic = dlq_topic
        self._producer_name = producer_name
        self._handler = handler
        self._on_committed = on_committed
        self.batch_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.assigned: frozenset[TopicPartition] = frozenset()
        # The next offset each partition expects. Tansu has been seen to hand a record out
        # twice (overlapping batches in one fetch); a second copy must not be applied again —
        # for a poison record that would be a second dead letter.
        self._expected: dict[TopicPartition, int] = {}
        # Bumped by every seek. aiokafka starts fetching a new assignment before our listener
        # has sought to the stored offsets, so a batch polled before a seek is stale: applying
        # it could skip or repeat records. It is dropped and read again from the new position.
        self._seeks = 0
        # The owner epoch of each partition claimed at assignment (its offset writes carry it),
        # and the name the claims leave on the rows (for whoever looks at who held what).
        self._epochs: dict[TopicPartition, int] = {}
        self._owner = f"{socket.gethostname()}/{os.getpid()}"
        # Offsets committed to PostgreSQL and not yet to Kafka, and the task sending them: the
        # next batch does not wait on the broker's round trip (at most one commit in flight).
        self._kafka_pending: dict[TopicPartition, int] = {}
        self._kafka_commits: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._consumer is not None and bool(self.assigned)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stop() is called; the in-flight batch is committed or abandoned whole."""
        consumer = make_consumer(
            self._kafka,
            group_id=self.group_id,
            max_poll_records=self._settings.max_batch,
            max_partition_fetch_bytes=self._settings.max_partition_fetch_bytes,
        )
        consumer.subscribe(self._topics, listener=_Rebalance(self))
        # Set before start(): the first rebalance callback may fire while start() runs.
        self._consumer = consumer
        await self._start(consumer)
        try:
            while not self._stopping.is_set():
                batch = await self._poll(consumer)
                polled_at_seek = self._seeks
                if batch:
                    batch = await self._linger(consumer, batch, polled_at_seek)
                self.assigned = frozenset(consumer.assignment())
                ASSIGNED_PARTITIONS.labels(group=self.group_id).set(len(self.assigned))
                if batch:
                    await self._process_until_done(batch, polled_at_seek)
                else:
                    await self._rewind_past_log_end(consumer)
                if self._watcher is not None:
                    await self._report_caught_up(consumer, set(batch))
        finally:
            if self._kafka_commits is not None:
                await asyncio.gather(self._kafka_commits, return_exceptions=True)
            self._consumer = None
            self.assigned = frozenset()
            await consumer.stop()

    async def _poll(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Record]]:
        """A batch; with lanes, each lane's share from a poll of the partitions not in the
        batch yet, then whatever else is buffered. aiokafka fills a poll from one partition's
        buffer as far as it goes, so a backlog would otherwise come one partition per batch,
        which lanes cannot split. The top-ups are skipped after a seek, as the linger's is
        (see _linger)."""
        size = self._settings.max_batch
        share = max(1, size // self._lanes)
        batch: dict[TopicPartition, list[Record]] = await consumer.getmany(
            timeout_ms=self._settings.poll_timeout_ms, max_records=share
        )
        if not batch or self._lanes == 1:
            return batch
        seeks = self._seeks
        async with self.batch_lock:
            for _ in range(1, self._lanes):
                others = [tp for tp in consumer.assignment() if tp not in batch]
                if self._seeks != seeks or not others:
                    break
                _extend(batch, await consumer.getmany(*others, timeout_ms=0, max_records=share))
            # The rest of the batch from any partition (one partition alone fills it so).
            room = size - sum(len(r) for r in batch.values())
            if self._seeks == seeks and room > 0:
                _extend(batch, await consumer.getmany(timeout_ms=0, max_records=room))
        return batch

    async def _linger(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[Record]],
        polled_at_seek: int,
    ) -> dict[TopicPartition, list[Record]]:
        """Top a short batch up with what arrives within `linger_ms`.

        Not after a seek: the batch is stale then and will be dropped, and records fetched
        from the new position would be dropped with it (and never handed out again). The
        batch lock keeps a seek (the rebalance listener's, which takes it) from slipping in
        between that check and the poll."""
        room = self._settings.max_batch - sum(len(r) for r in batch.values())
        if self._settings.linger_ms <= 0 or room <= 0:
            return batch
        await asyncio.sleep(self._settings.linger_ms / 1000)
        async with self.batch_lock:
            if self._seeks != polled_at_seek:
                return batch
            more = await consumer.getmany(timeout_ms=0, max_records=room)
        _extend(batch, more)
        return batch

    async def _start(self, consumer: AIOKafkaConsumer) -> None:
        backoff = Backoff(first=0.2)
        while True:
            try:
                await consumer.start()
                return
            except KafkaError as exc:
                if self._stopping.is_set():
                    raise
                log.warning(
                    "broker_unreachable",
                    group=self.group_id,
                    error=str(exc),
                    retry_in=backoff.delay,
                )
                await backoff.wait()

    async def seek_to_stored(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer_or_raise()
        if not assigned:
            self.assigned = frozenset()
            return
        ends = await consumer.end_offsets(list(assigned))
        begins = await consumer.beginning_offsets(list(assigned))
        # Claim the partitions (fencing out whoever held them) and read their offsets of record
        # in one statement; a partition never stored is claimed at its log start. Unclaimed, a
        # partition is not consumed at all: with the database away, wait for it.
        backoff = Backoff(first=0.2)
        while True:
            try:
                async with self._engine.begin() as conn:
                    claims = await claim_partitions(
                        conn, self.group_id, {tp: begins[tp] for tp in assigned}, self._owner
                    )
                    if self._watcher is not None:
                        await self._watcher.assigned(conn, frozenset(assigned))
                break
            except Exception as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    raise
                log.warning(
                    "partition_claim_retry",
                    group=self.group_id,
                    error=str(exc),
                    retry_in=backoff.delay,
                )
                await backoff.wait()
        self._epochs = {tp: c.epoch for tp, c in claims.items()}
        # Seek to the offsets of record. An empty partition under a stored offset means the
        # broker lost its log (the in-memory broker restarted): read from the start, the ledger
        # makes that safe. A non-empty one is judged later from fetch high watermarks, because
        # some brokers (Tansu) answer ListOffsets with the start of the last batch.
        for tp in sorted(assigned):
            start = claims[tp].next_offset
            if start > 0 and ends[tp] == 0:
                self._log_lost(tp, "stored_offset_beyond_empty_log", stored=start)
                start = begins[tp]
            consumer.seek(tp, start)
            self._expected[tp] = start
        self._seeks += 1
        self.assigned = frozenset(assigned)
        log.info("partitions_assigned", group=self.group_id, count=len(assigned))

    async def _rewind_past_log_end(self, consumer: AIOKafkaConsumer) -> None:
        """A position past the partition's high watermark means the broker lost its log (the
        in-memory broker restarted): read it again from the start; the ledger makes that safe.
        (Apache Kafka answers OffsetOutOfRange instead, and auto_offset_reset does the same.)"""
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = await consumer.position(tp)
            if position > high:
                self._log_lost(tp, "position_beyond_log_end", position=position, log_end=high)
                await consumer.seek_to_beginning(tp)
                self._expected.pop(tp, None)
                self._seeks += 1

    def _log_lost(self, tp: TopicPartition, event: str, **where: int) -> None:
        """Alert (log line and `tierflow_consumer_log_loss_total`): the broker lost records this
        group had applied, and with them whatever they published downstream."""
        log.error(event, group=self.group_id, topic=tp.topic, partition=tp.partition, **where)
        LOG_LOSS.labels(group=self.group_id, topic=tp.topic, partition=str(tp.partition)).inc()

    async def _report_caught_up(
        self, consumer: AIOKafkaConsumer, in_batch: set[TopicPartition]
    ) -> None:
        """Partitions with nothing in this poll whose position reached the fetched high
        watermark: every record before it was in an earlier batch, which is applied by now."""
        assert self._watcher is not None
        done: set[TopicPartition] = set()
        for tp in consumer.assignment() - in_batch:
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            if position >= high:
                done.add(tp)
        if not done:
            return
        try:
            await self._watcher.caught_up(frozenset(done))
        except Exception as exc:  # the database may be down: told again after the next poll
            log.warning("caught_up_report_failed", group=self.group_id, error=str(exc))

    def released(self, partitions: set[TopicPartition]) -> None:
        """Partitions revoked or fenced: no more writes for them until they are claimed again."""
        for tp in partitions:
            self._epochs.pop(tp, None)

    def _consumer_or_raise(self) -> AIOKafkaConsumer:
        # The listener runs only after subscribe(), so the consumer exists by then.
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("consumer not started")
        return consumer

    async def _process_until_done(
        self, batch: dict[TopicPartition, list[Record]], polled_at_seek: int
    ) -> None:
        """Apply `batch` in lanes (parts over disjoint partitions, each in its own
        transaction, at once); a part that failed transiently is retried after a backoff, the
        rest of a fenced part at once. The Kafka commit follows for whatever was applied."""
        backoff = Backoff()
        pending = batch
        applied: dict[TopicPartition, int] = {}
        try:
            while True:
                async with self.batch_lock:
                    consumer = self._consumer_or_raise()
                    if self._seeks != polled_at_seek:
                        log.info("stale_batch_dropped", group=self.group_id, seeks=self._seeks)
                        return
                    owned = self._fresh(
                        {
                            tp: recs
                            for tp, recs in pending.items()
                            if tp in consumer.assignment() and tp in self._epochs
                        }
                    )
                    if not owned:
                        return
                    parts = split_lanes(owned, self._lanes)
                    results = await asyncio.gather(*(self._apply_part(part) for part in parts))
                pending, later = {}, False
                for part, (verdict, offsets) in zip(parts, results, strict=True):
                    applied.update(offsets)
                    if verdict is not _Verdict.DONE:
                        pending.update(part)
                        later = later or verdict is _Verdict.LATER
                if not pending:
                    return
                if self._stopping.is_set():
                    # Abandon without committing: the stored offsets make the next owner redo it.
                    return
                if later:
                    log.warning("batch_retry", group=self.group_id, retry_in=backoff.delay)
                    await backoff.wait()
        finally:
            if applied:
                # Outside the lock: a Kafka commit may wait on a rebalance that waits on it.
                self._commit_to_kafka_soon(applied)

    async def _apply_part(
        self, part: dict[TopicPartition, list[Record]]
    ) -> tuple[_Verdict, dict[TopicPartition, int]]:
        """One lane's transaction: its offsets when applied (a handler error other than a
        transient one isolates the records it chokes on); AGAIN when some of its partitions
        were fenced (the rest goes again at once), LATER on a transient error."""
        try:
            try:
                return _Verdict.DONE, await self._commit_batch(part)
            except OffsetsFenced:
                raise
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error(
                    "batch_failed_isolating_records", group=self.group_id, **error_fields(exc)
                )
            return _Verdict.DONE, await self._commit_one_by_one(part)
        except OffsetsFenced as exc:
            # Claimed by another member since our assignment (we were paused past the
            # session timeout): the part rolled back; the rest is retried at once.
            self._fenced(exc, part)
            return _Verdict.AGAIN, {}
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("batch_failed_transiently", group=self.group_id, error=str(exc))
            return _Verdict.LATER, {}

    def _fenced(self, exc: OffsetsFenced, batch: dict[TopicPartition, list[Record]]) -> None:
        fenced = {tp for tp in batch if tp in exc.partitions}
        refused = sum(len(batch[tp]) for tp in fenced)
        log.warning(
            "offset_write_fenced",
            group=self.group_id,
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in fenced),
            records=refused,
        )
        CONSUMED.labels(group=self.group_id, outcome="fenced").inc(refused)
        self.released(fenced)

    def _fresh(
        self, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, list[Record]]:
        fresh, skipped = drop_redelivered(batch, self._expected)
        for record in skipped:
            log.warning(
                "redelivered_record_skipped",
                group=self.group_id,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        return fresh

    async def _commit_one_by_one(
        self, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, int]:
        """Find the record(s) a handler chokes on and dead-letter only those."""
        committed: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for record in records:
                single = {tp: [record]}
                try:
                    committed.update(await self._commit_batch(single))
                except Exception as exc:
                    if is_transient(exc) or isinstance(exc, OffsetsFenced):
                        raise
                    error = error_fields(exc)
                    log.error("record_dead_lettered_on_error", offset=record.offset, **error)
                    reason = f"unhandled error: {error['error_type']} at {error['raised_at']}"
                    committed.update(
                        await self._commit_batch(single, forced_dead=[DeadLetter(record, reason)])
                    )
        return committed

    async def _commit_batch(
        self,
        batch: dict[TopicPartition, list[Record]],
        forced_dead: list[DeadLetter] | None = None,
    ) -> dict[TopicPartition, int]:
        records = [r for tp in sorted(batch) for r in batch[tp]]
        with BATCH_SECONDS.labels(group=self.group_id).time():
            async with self._engine.begin() as conn:
                if forced_dead is None:
                    outcome = await self._handler(conn, records)
                else:
                    outcome = BatchOutcome(dead=forced_dead)
                dlq = [
                    (self._dlq_topic, dead_letter_record(d, self.group_id)) for d in outcome.dead
                ]
                await enqueue(conn, self._producer_name, [*outcome.emit, *dlq])
                next_offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
                await store_offsets(conn, self.group_id, next_offsets, self._epochs)
        self._expected.update(next_offsets)
        for d in outcome.dead:
            DEAD_LETTERED.labels(group=self.group_id, reason=d.field or "record").inc()
            log.warning(
                "dead_lettered",
                topic=d.record.topic,
                partition=d.record.partition,
                offset=d.record.offset,
                reason=d.reason,
                field=d.field,
            )
        CONSUMED.labels(group=self.group_id, outcome="applied").inc(outcome.applied)
        CONSUMED.labels(group=self.group_id, outcome="duplicate").inc(outcome.duplicates)
        CONSUMED.labels(group=self.group_id, outcome="dead_lettered").inc(len(outcome.dead))
        if self._on_committed is not None:
            self._on_committed()
        return next_offsets

    def _commit_to_kafka_soon(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit to Kafka in the background: only so lag shows in standard Kafka tooling
        (PostgreSQL holds the offsets of record), so no batch waits on it. Offsets that arrive
        while a commit is in flight go out together in the next one."""
        self._kafka_pending.update(offsets)
        if self._kafka_commits is None or self._kafka_commits.done():
            self._kafka_commits = asyncio.create_task(self._send_kafka_commits())

    async def _send_kafka_commits(self) -> None:
        while self._kafka_pending:
            offsets, self._kafka_pending = self._kafka_pending, {}
            await self._commit_to_kafka(offsets)

    async def _commit_to_kafka(self, offsets: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        owned = {tp: off for tp, off in offsets.items() if tp in consumer.assignment()}
        if not owned:
            return
        try:
            await asyncio.wait_for(consumer.commit(owned), timeout=5.0)
        except (KafkaError, TimeoutError) as exc:
            log.debug("kafka_commit_skipped", error=str(exc))
