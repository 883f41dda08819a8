"""What a phase wrote: rows per table (PostgreSQL's own counters) and records per topic (the
broker's end offsets), per event. With the raw baselines' server CPU per row and per record it
gives the pipeline's floor: what the same rows and records would cost the servers and clients
if the bare clients wrote them (bench/report.py).

PostgreSQL's counters are flushed by each backend at the end of a transaction at most once a
second, and by an idle one within its idle interval: the caller waits that out before the
second snapshot (bench/e2e.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from aiokafka import TopicPartition

from bench.progress import APPLIED
from tierflow_common.kafka import make_consumer
from tierflow_common.settings import KafkaSettings

# A partition's rows count for its parent (processed_events, ingest_receipts are partitioned).
_WRITES = """
SELECT coalesce(p.relname, s.relname) AS name,
       sum(s.n_tup_ins)::bigint AS ins, sum(s.n_tup_upd)::bigint AS upd,
       sum(s.n_tup_del)::bigint AS del
FROM pg_stat_user_tables s
LEFT JOIN pg_inherits i ON i.inhrelid = s.relid
LEFT JOIN pg_class p ON p.oid = i.inhparent
GROUP BY 1
"""

Writes = dict[str, tuple[int, int, int]]  # table -> (inserted, updated, deleted)


async def _table_writes(dsn: str) -> Writes:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["name"]: (r["ins"], r["upd"], r["del"]) for r in await conn.fetch(_WRITES)}
    finally:
        await conn.close()


def table_writes(dsn: str) -> Writes:
    return asyncio.run(_table_writes(dsn))


async def _applied(dsn: str, group: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(APPLIED, group))
    finally:
        await conn.close()


def applied_records(dsn: str, group: str) -> int:
    """Records a consumer group has applied (progress.APPLIED)."""
    return asyncio.run(_applied(dsn, group))


async def _topic_records(kafka: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # the metadata of every topic
        out: dict[str, int] = {}
        for topic in topics:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await consumer.end_offsets(tps) if tps else {}
            out[topic] = int(sum(ends.values()))
        return out
    finally:
        await consumer.stop()


def topic_records(kafka: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    return asyncio.run(_topic_records(kafka, list(topics)))


def per_event(
    before: Writes, after: Writes, records: Mapping[str, int], events: int
) -> dict[str, Any]:
    """Rows written (inserted + updated + deleted) and records produced per event."""
    rows: dict[str, dict[str, float]] = {}
    for name, (ins, upd, dele) in sorted(after.items()):
        b = before.get(name, (0, 0, 0))
        d = (ins - b[0], upd - b[1], dele - b[2])
        if any(d):
            rows[name] = {
                "inserted": round(d[0] / events, 3),
                "updated": round(d[1] / events, 3),
                "deleted": round(d[2] / events, 3),
            }
    return {
        "events": events,
        "rows_per_event": rows,
        "row_writes_per_event": round(sum(sum(v.values()) for v in rows.values()), 3),
        "records_per_event": {t: round(n / events, 3) for t, n in sorted(records.items()) if n},
        "total_records_per_event": round(sum(records.values()) / events, 3),
    }
