"""Broker operations for the CLI and the console: consumer lag, topic search, dead letters and
their redrive, topic end offsets for rates. Async, typed, no web framework.

Settings are passed in (KafkaSettings / TopicSettings / DatabaseSettings); left out, they are
read from the environment at call time, as the services read them.

Lag is measured against what a service has really applied: the classifier and the notifier
store their next offsets in PostgreSQL (`consumer_offsets`) in the transaction that applied the
records; the broker's committed offsets of a group are used only where no stored ones exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.consumer import Record
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import consumer_offsets
from tierflow_common.dead_letters import (
    DeadLetter,
    OperationError,
    RedriveResult,
    dead_letter,
    dead_letters,
    redrive,
)
from tierflow_common.kafka import make_admin, partition_for
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_common.topic_reader import (
    TopicRecord,
    log_ends,
    log_starts,
    offsets_at,
    partitions_of,
    read_ranges,
    reader,
    record_text,
    topic_record,
)

__all__ = [
    "DeadLetter",
    "OperationError",
    "PartitionLag",
    "RedriveResult",
    "TopicEnds",
    "TopicRecord",
    "consumer_lag",
    "dead_letter",
    "dead_letters",
    "follow_topic",
    "redrive",
    "search_topic",
    "topic_ends",
]

# Records read backwards per partition per step while searching newest first.
SEARCH_STEP = 2_000
# At most this many records are read per partition by one search (a bound on its cost).
SEARCH_BUDGET = 200_000

OffsetSource = Literal["database", "broker", "none"]


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # the next offset the group will apply (None: nothing applied)
    end: int  # the partition's log end (high watermark)
    lag: int  # end - committed: records produced and not yet applied
    source: OffsetSource = "database"


@dataclass(frozen=True)
class TopicEnds:
    """End offsets (summed over partitions) of topics at one instant; two samples give rates."""

    at: datetime
    ends: dict[str, int]

    def rates_since(self, earlier: TopicEnds) -> dict[str, float]:
        """Records per second appended to each topic between `earlier` and this sample."""
        seconds = (self.at - earlier.at).total_seconds()
        if seconds <= 0:
            return dict.fromkeys(self.ends, 0.0)
        return {t: max(n - earlier.ends.get(t, 0), 0) / seconds for t, n in self.ends.items()}


# --- lag ------------------------------------------------------------------------------------


async def _stored_offsets(
    database: DatabaseSettings, topic_names: set[str], engine: AsyncEngine | None
) -> dict[tuple[str, str], dict[int, int]]:
    """The offsets the services stored with their state; on the caller's engine when it keeps
    one (the console samples every few seconds), else on one made for this call."""
    own = engine is None
    engine = engine or create_engine(database)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(
                    consumer_offsets.c.group_id,
                    consumer_offsets.c.topic,
                    consumer_offsets.c.partition,
                    consumer_offsets.c.next_offset,
                ).where(consumer_offsets.c.topic.in_(sorted(topic_names)))
            )
            out: dict[tuple[str, str], dict[int, int]] = {}
            for r in rows:
                out.setdefault((r.group_id, r.topic), {})[r.partition] = r.next_offset
            return out
    finally:
        if own:
            await engine.dispose()


async def broker_offsets(
    kafka: KafkaSettings, tps: Sequence[TopicPartition], groups: Sequence[str] | None
) -> dict[tuple[str, str], dict[int, int]]:
    """The broker's committed offsets of groups (all it lists unless `groups`) on `tps`.

    The partitions are named in the request: Tansu's answer to OffsetFetch for all of a
    group's partitions does not decode."""
    out: dict[tuple[str, str], dict[int, int]] = {}
    if not tps:
        return out
    admin = make_admin(kafka)
    try:
        await admin.start()
        names = (
            list(groups)
            if groups is not None
            else sorted(g[0] for g in await admin.list_consumer_groups())
        )
        for group in names:
            try:
                committed = await admin.list_consumer_group_offsets(group, partitions=list(tps))
            except KafkaError:
                continue
            for tp, meta in committed.items():
                if meta.offset >= 0:
                    out.setdefault((group, tp.topic), {})[tp.partition] = meta.offset
    except KafkaError:
        return out  # a broker without group listing: the stored offsets still answer
    finally:
        await admin.close()
    return out


async def consumer_lag(
    *,
    kafka: KafkaSettings | None = None,
    topics: TopicSettings | None = None,
    database: DatabaseSettings | None = None,
    groups: Sequence[str] | None = None,
    engine: AsyncEngine | None = None,
) -> list[PartitionLag]:
    """Lag of every consumer group on the pipeline's topics, per partition, sorted by group,
    topic, partition: from the offsets the services stored with their state (`database`),
    else the broker's committed offsets. `groups`: only these. `engine`: a caller's own
    engine on that database, reused (else one is made and closed for the call)."""
    kafka = kafka or KafkaSettings()
    topics = topics or TopicSettings()
    stored = await _stored_offsets(database or DatabaseSettings(), set(topics.all_topics()), engine)
    out: list[PartitionLag] = []
    async with reader(kafka) as consumer:
        tps = {t: await partitions_of(consumer, t) for t in topics.all_topics()}
        every = [tp for found in tps.values() for tp in found]
        broker = await broker_offsets(kafka, every, groups)
        pairs = {p for p in (*stored, *broker) if groups is None or p[0] in groups}
        ends = await log_ends(consumer, [tp for t in {t for _, t in pairs} for tp in tps[t]])
    for group, topic in sorted(pairs):
        for tp in tps[topic]:
            source: OffsetSource = "database"
            committed = stored.get((group, topic), {}).get(tp.partition)
            if committed is None:
                committed = broker.get((group, topic), {}).get(tp.partition)
                source = "broker" if committed is not None else "none"
            lag = max(ends[tp] - (committed or 0), 0)
            out.append(PartitionLag(group, topic, tp.partition, committed, ends[tp], lag, source))
    return out


async def topic_ends(
    *, kafka: KafkaSettings | None = None, topics: TopicSettings | None = None
) -> TopicEnds:
    """End offsets of the pipeline's topics now (sample twice for events in, changes out and
    actions per second: `later.rates_since(earlier)`)."""
    kafka = kafka or KafkaSettings()
    topics = topics or TopicSettings()
    async with reader(kafka) as consumer:
        tps = [tp for t in topics.all_topics() for tp in await partitions_of(consumer, t)]
        ends = await log_ends(consumer, tps)
    at = datetime.now(UTC)
    summed = dict.fromkeys(topics.all_topics(), 0)
    for tp, end in ends.items():
        summed[tp.topic] += end
    return TopicEnds(at, summed)


# --- search ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Filter:
    key: bytes | None
    event_id: str | None
    type: str | None
    since_ms: int | None
    until_ms: int | None

    def matches(self, record: Record) -> bool:
        if self.key is not None and record.key != self.key:
            return False
        if self.since_ms is not None and record.timestamp < self.since_ms:
            return False
        if self.until_ms is not None and record.timestamp >= self.until_ms:
            return False
        if self.event_id is None and self.type is None:
            return True
        headers = dict(record.headers or ())
        if self.event_id is not None and record_text(headers.get("ce_id")) != self.event_id:
            return False
        return self.type is None or record_text(headers.get("ce_type")) == self.type


def _ms(at: datetime | None) -> int | None:
    return None if at is None else int(at.timestamp() * 1000)


async def search_topic(
    topic: str,
    *,
    key: str | None = None,
    event_id: str | None = None,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    newest_first: bool = True,
    kafka: KafkaSettings | None = None,
) -> list[TopicRecord]:
    """Records of `topic` matching every filter given (`key`: the record key, e.g. a customer
    id, read from the one partition the producers' partitioner puts it on; `event_id` /
    `type`: the ce_id / ce_type headers; [since, until): the record timestamp, the start found
    by offsets_for_times), at most `limit`, newest (or oldest) first by timestamp."""
    kafka = kafka or KafkaSettings()
    wanted = _Filter(
        key.encode() if key is not None else None, event_id, type, _ms(since), _ms(until)
    )
    async with reader(kafka) as consumer:
        tps = await partitions_of(consumer, topic)
        if not tps:
            return []
        if key is not None:
            chosen = partition_for(key.encode(), [tp.partition for tp in tps])
            tps = [TopicPartition(topic, chosen)]
        ends = await log_ends(consumer, tps)
        starts = await log_starts(consumer, tps)
        if since is not None:
            starts = await offsets_at(consumer, tps, since, starts, ends)
        if until is not None:
            ends = await offsets_at(consumer, tps, until, starts, ends)
        found: list[Record] = []
        for tp in tps:
            found += await _search_partition(
                consumer, tp, starts[tp], ends[tp], wanted, limit, newest_first
            )
    found.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=newest_first)
    return [topic_record(r) for r in found[:limit]]


async def _search_partition(
    consumer: Any,
    tp: TopicPartition,
    start: int,
    end: int,
    wanted: _Filter,
    limit: int,
    newest_first: bool,
) -> list[Record]:
    """Up to `limit` matches of one partition, from its newest (or oldest) end."""
    found: list[Record] = []
    budget = SEARCH_BUDGET
    if not newest_first:
        async for record in read_ranges(consumer, {tp: (start, min(end, start + budget))}):
            if wanted.matches(record):
                found.append(record)
                if len(found) >= limit:
                    break
        return found
    high = end
    while high > start and budget > 0 and len(found) < limit:
        low = max(start, high - min(SEARCH_STEP, budget))
        window = [r async for r in read_ranges(consumer, {tp: (low, high)}) if wanted.matches(r)]
        found += reversed(window)
        budget -= high - low
        high = low
    return found[:limit]


async def follow_topic(
    topic: str,
    *,
    key: str | None = None,
    type: str | None = None,
    kafka: KafkaSettings | None = None,
    poll_ms: int = 500,
) -> AsyncIterator[TopicRecord]:
    """Records appended to `topic` from now on that match `key` / `type`, as they arrive
    (`key`: only its partition is read). Runs until the caller stops iterating."""
    kafka = kafka or KafkaSettings()
    wanted = _Filter(key.encode() if key is not None else None, None, type, None, None)
    async with reader(kafka) as consumer:
        tps = await partitions_of(consumer, topic)
        if key is not None and tps:
            chosen = partition_for(key.encode(), [tp.partition for tp in tps])
            tps = [TopicPartition(topic, chosen)]
        ends = await log_ends(consumer, tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, ends[tp])
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=poll_ms)
            for records in batch.values():
                for record in records:
                    if wanted.matches(record):
                        yield topic_record(record)
