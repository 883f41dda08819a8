"""Dead letters: the records a consumer could not apply, as it wrote them to its DLQ topic
(tierflow_common.consumer.dead_letter_record: the original key, value and headers plus
`dlq_*` headers saying where it came from and why), listed and sent back (redrive).

Redrive is safe to repeat: the consumers dedupe by event id (the classifier's event-id ledger,
the notifier's action ids), so a record already applied is not applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tierflow_common.consumer import Record
from tierflow_common.kafka import make_producer
from tierflow_common.settings import KafkaSettings
from tierflow_common.topic_reader import (
    log_ends,
    log_starts,
    partitions_of,
    read_ranges,
    reader,
    record_headers,
    record_text,
    record_time,
    record_value,
)

DLQ_PREFIX = "dlq_"
# At most this many records of each DLQ partition are read (the newest).
DLQ_READ_LIMIT = 200_000


class OperationError(Exception):
    """A request the broker's contents cannot satisfy (no such dead letter, bad cursor)."""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp: datetime
    reason: str
    field: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    original: Any  # the original record's value, decoded
    headers: dict[str, str]  # the original record's headers (without dlq_*)
    key: str | None = None
    consumer_group: str | None = None

    @property
    def cursor(self) -> str:
        """`after` for the next page of dead letters."""
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True)
class RedriveResult:
    sent: int
    # (dlq partition, dlq offset) of each record re-sent, and where it went.
    records: list[tuple[int, int]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


def dead_letter(record: Record) -> DeadLetter:
    """A DLQ record as the consumers wrote it (tierflow_common.consumer.dead_letter_record)."""
    headers = record_headers(record)

    def number(name: str) -> int | None:
        raw = headers.get(name)
        return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None

    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record_time(record),
        reason=headers.get("dlq_reason", ""),
        field=headers.get("dlq_field") or None,
        source_topic=headers.get("dlq_source_topic") or None,
        source_partition=number("dlq_source_partition"),
        source_offset=number("dlq_source_offset"),
        original=record_value(record.value),
        headers={k: v for k, v in headers.items() if not k.startswith(DLQ_PREFIX)},
        key=record_text(record.key),
        consumer_group=headers.get("dlq_consumer_group") or None,
    )


def _parse_cursor(after: str) -> tuple[int, int]:
    try:
        partition, offset = after.split(":", 1)
        return int(partition), int(offset)
    except ValueError as exc:
        raise OperationError(f"bad cursor {after!r}: use a dead letter's `cursor`") from exc


async def _dlq_records(kafka: KafkaSettings, dlq_topic: str) -> list[Record]:
    async with reader(kafka) as consumer:
        tps = await partitions_of(consumer, dlq_topic)
        ends = await log_ends(consumer, tps)
        starts = await log_starts(consumer, tps)
        ranges = {tp: (max(starts[tp], ends[tp] - DLQ_READ_LIMIT), ends[tp]) for tp in tps}
        records = [r async for r in read_ranges(consumer, ranges)]
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return records


async def dead_letters(
    topic: str,
    *,
    limit: int = 50,
    after: str | None = None,
    kafka: KafkaSettings | None = None,
) -> list[DeadLetter]:
    """The dead letters of a DLQ topic, oldest first (by time, partition, offset), paged:
    `after` is the `cursor` of the last one of the previous page."""
    records = await _dlq_records(kafka or KafkaSettings(), topic)
    if after is not None:
        mark = _parse_cursor(after)
        index = next((i for i, r in enumerate(records) if (r.partition, r.offset) == mark), None)
        if index is None:
            raise OperationError(f"no dead letter {after} on {topic}")
        records = records[index + 1 :]
    return [dead_letter(r) for r in records[:limit]]


async def redrive(
    dlq_topic: str,
    *,
    partition: int | None = None,
    offset: int | None = None,
    all: bool = False,
    kafka: KafkaSettings | None = None,
) -> RedriveResult:
    """Send dead letters back to the topic they came from: the original key, value and
    headers (without dlq_*), so the consumer applies them again. Safe to repeat: the
    consumers dedupe by event id, so a record already applied is not applied twice.
    One record (`partition` and `offset`) or `all` of the topic."""
    if not all and (partition is None or offset is None):
        raise OperationError("name one dead letter (partition and offset) or ask for all")
    kafka = kafka or KafkaSettings()
    records = await _dlq_records(kafka, dlq_topic)
    if not all:
        records = [r for r in records if (r.partition, r.offset) == (partition, offset)]
        if not records:
            raise OperationError(f"no dead letter {partition}:{offset} on {dlq_topic}")
    letters = [(r, dead_letter(r)) for r in records]
    unknown = [f"{d.partition}:{d.offset}" for _, d in letters if d.source_topic is None]
    if unknown:
        raise OperationError(f"dead letters without dlq_source_topic: {', '.join(unknown)}")
    producer = make_producer(kafka)
    await producer.start()
    try:
        futures = []
        for record, letter in letters:
            assert letter.source_topic is not None
            headers = [
                (k, bytes(v)) for k, v in (record.headers or ()) if not k.startswith(DLQ_PREFIX)
            ]
            futures.append(
                await producer.send(
                    letter.source_topic, value=record.value, key=record.key, headers=headers
                )
            )
        for future in futures:
            await future
    finally:
        await producer.stop()
    return RedriveResult(
        sent=len(letters),
        records=[(d.partition, d.offset) for _, d in letters],
        targets=sorted({d.source_topic for _, d in letters if d.source_topic}),
    )
