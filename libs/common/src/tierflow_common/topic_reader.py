"""Reading topics for operators: true log ends, offsets by time, and offset ranges.

Tansu answers ListOffsets(latest) with the base offset of a partition's last record batch + 1,
short of the end whenever that batch holds several records; the high watermark in its Fetch
answers is right. So the end of a partition is read from a fetch just before the listed end.
Every client comes from tierflow_common.kafka, so TLS and SASL settings apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, UnsupportedVersionError

from tierflow_common.consumer import Record
from tierflow_common.kafka import make_consumer
from tierflow_common.settings import KafkaSettings

FETCH_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    timestamp: datetime
    key: str | None
    headers: dict[str, str]
    value: Any  # decoded JSON, else text (None for a tombstone)


def record_text(raw: bytes | None) -> str | None:
    return None if raw is None else bytes(raw).decode("utf-8", "backslashreplace")


def record_headers(record: Record) -> dict[str, str]:
    return {k: record_text(v) or "" for k, v in (record.headers or ())}


def record_value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return record_text(raw)


def record_time(record: Record) -> datetime:
    return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)


def topic_record(record: Record) -> TopicRecord:
    return TopicRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record_time(record),
        key=record_text(record.key),
        headers=record_headers(record),
        value=record_value(record.value),
    )


@asynccontextmanager
async def reader(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer outside any group (it assigns partitions itself, commits nothing)."""
    consumer = make_consumer(kafka, group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a broker that cannot be reached: close what start() opened
        raise
    # Let the consumer's background task start: cancelled before its first step (a reader
    # stopped at once), aiokafka's stop() raises CancelledError.
    await asyncio.sleep(0)
    try:
        yield consumer
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions, sorted (empty for a topic the broker does not know)."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


async def log_ends(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition (its high watermark)."""
    if not tps:
        return {}
    consumer.assign(list(tps))
    listed = await consumer.end_offsets(list(tps))
    for tp in tps:
        consumer.seek(tp, max(int(listed[tp]) - 1, 0))
    deadline = asyncio.get_running_loop().time() + FETCH_TIMEOUT_S
    while any(consumer.highwater(tp) is None for tp in tps):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the broker answered no fetch for the log end in time")
        await consumer.getmany(*tps, timeout_ms=100, max_records=1)
    return {tp: max(int(consumer.highwater(tp) or 0), int(listed[tp])) for tp in tps}


async def log_starts(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    return {tp: int(o) for tp, o in (await consumer.beginning_offsets(list(tps))).items()}


async def offsets_at(
    consumer: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    at: datetime,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """The first offset of each partition whose timestamp is at or after `at`, or its end.

    Asked of the broker (ListOffsets by time) and checked against the records: Tansu answers
    offset 0 for any time. Where the answer is wrong, the offset is found by bisection over
    the record timestamps (a partition's records are in time order as producers write them;
    a caller that needs exactness filters by timestamp too)."""
    target = int(at.timestamp() * 1000)
    try:
        found = await consumer.offsets_for_times(dict.fromkeys(tps, target))
    except (UnsupportedVersionError, KafkaError):
        found = {}
    out: dict[TopicPartition, int] = {}
    for tp in tps:
        answer = found.get(tp)
        offset = ends[tp] if answer is None else answer.offset
        if not await _first_at(consumer, tp, offset, target, starts[tp], ends[tp]):
            offset = await _bisect(consumer, tp, target, starts[tp], ends[tp])
        out[tp] = offset
    return out


async def timestamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> int | None:
    async for record in read_ranges(consumer, {tp: (offset, offset + 1)}):
        return int(record.timestamp)
    return None


async def _first_at(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, target: int, start: int, end: int
) -> bool:
    """Whether `offset` is the first of the partition at or after `target`."""
    if offset < end:
        ts = await timestamp_at(consumer, tp, offset)
        if ts is None or ts < target:
            return False
    if offset > start:
        before = await timestamp_at(consumer, tp, offset - 1)
        if before is None or before >= target:
            return False
    return True


async def _bisect(
    consumer: AIOKafkaConsumer, tp: TopicPartition, target: int, start: int, end: int
) -> int:
    lo, hi = start, end
    while lo < hi:
        mid = (lo + hi) // 2
        ts = await timestamp_at(consumer, tp, mid)
        if ts is None or ts < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


async def read_ranges(
    consumer: AIOKafkaConsumer, ranges: Mapping[TopicPartition, tuple[int, int]]
) -> AsyncIterator[Record]:
    """Every record in [low, high) of each partition, each partition in offset order."""
    todo = {tp: (lo, hi) for tp, (lo, hi) in ranges.items() if hi > lo}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, (lo, _) in todo.items():
        consumer.seek(tp, lo)
    deadline = asyncio.get_running_loop().time() + FETCH_TIMEOUT_S
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=200)
        if batch:
            deadline = asyncio.get_running_loop().time() + FETCH_TIMEOUT_S
        elif asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the broker stopped answering fetches")
        for tp, records in batch.items():
            if tp not in todo:
                continue
            high = todo[tp][1]
            for record in records:
                if record.offset >= high:
                    break
                yield record
            if records and records[-1].offset >= high - 1:
                todo.pop(tp)
        for tp in list(todo):
            # A partition whose records ran out below `high` (compacted or truncated logs).
            if await consumer.position(tp) >= todo[tp][1]:
                todo.pop(tp)
