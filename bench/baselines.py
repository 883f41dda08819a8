"""Raw baselines on the same broker, database and machine: what the pipeline's figures are
divided by. Each returns a plain dict that goes into the run's JSON as is."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import numpy as np
from aiokafka import TopicPartition

from bench.kafka_io import consume_rate, produce, purchase_record
from bench.loadgen import LoadSpec, percentiles, run_load
from bench.stack import ServiceProc
from tierflow_common.kafka import make_consumer, make_producer
from tierflow_common.settings import KafkaSettings


def raw_produce(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """One aiokafka producer, the services' settings (acks=all, linger 2 ms, 256 KiB batches)."""
    cpu0 = time.process_time()
    sent, seconds = asyncio.run(
        produce(bootstrap, topic, (purchase_record("raw", i, 100_000) for i in range(count)))
    )
    cpu = time.process_time() - cpu0
    return {
        "records": sent,
        "seconds": round(seconds, 3),
        "records_per_s": round(sent / seconds, 1),
        "client_cpu_s_per_1k": round(cpu / sent * 1000, 4),
    }


def raw_consume(bootstrap: str, topic: str, limit: int, max_seconds: float) -> dict[str, Any]:
    cpu0 = time.process_time()
    got, seconds = asyncio.run(consume_rate(bootstrap, topic, limit=limit, max_seconds=max_seconds))
    cpu = time.process_time() - cpu0
    return {
        "records": got,
        "seconds": round(seconds, 3),
        "records_per_s": round(got / seconds, 1),
        "client_cpu_s_per_1k": round(cpu / max(got, 1) * 1000, 4),
    }


_DIMENSIONS = json.dumps(
    {
        "value_tier": {
            "label": "important",
            "since": "2026-01-01T00:00:00+00:00",
            "rule": "important",
            "reason": "net spend 1250.00 USD >= 1000 and 3 purchase(s) >= 1",
            "explanation": {
                "rule": "important",
                "net_spend_lifetime": "1250.00",
                "purchases_lifetime": 3,
                "min_net_spend_lifetime": "1000",
                "min_purchases_lifetime": 1,
            },
            "rule_set_version": "2026.11-foundation.1",
        }
    }
)

_UPSERT = """
INSERT INTO bench_customers AS c (customer_id, purchases_lifetime, net_spend_lifetime,
    first_purchase_at, last_purchase_at, value_tier, dimensions)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::numeric[], $4::timestamptz[],
    $5::timestamptz[], $6::text[], $7::jsonb[])
ON CONFLICT (customer_id) DO UPDATE SET
    purchases_lifetime = excluded.purchases_lifetime,
    net_spend_lifetime = excluded.net_spend_lifetime,
    first_purchase_at = excluded.first_purchase_at,
    last_purchase_at = excluded.last_purchase_at,
    value_tier = excluded.value_tier,
    dimensions = excluded.dimensions,
    updated_at = now()
"""


async def _pg_upsert(dsn: str, rows: int, customers: int, batch: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE bench_customers (LIKE customers INCLUDING DEFAULTS INCLUDING INDEXES)"
        )
        now = datetime.now(UTC)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, rows, batch):
            ids = [f"c{(i * 7919) % customers}" for i in range(start, min(start + batch, rows))]
            ids = sorted(set(ids))
            n = len(ids)
            await conn.execute(
                _UPSERT,
                ids,
                [3] * n,
                [Decimal("1250.00")] * n,
                [now] * n,
                [now] * n,
                ["important"] * n,
                [_DIMENSIONS] * n,
            )
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        await conn.execute("DROP TABLE bench_customers")
        return {
            "rows": rows,
            "batch": batch,
            "customers": customers,
            "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds, 1),
            "client_cpu_s_per_1k": round(cpu / rows * 1000, 4),
            "method": "asyncpg: INSERT .. SELECT unnest(..) ON CONFLICT DO UPDATE, 1 tx/batch",
        }
    finally:
        await conn.close()


def raw_pg_upsert(dsn: str, rows: int, customers: int, batch: int = 2000) -> dict[str, Any]:
    return asyncio.run(_pg_upsert(dsn, rows, customers, batch))


def trivial_endpoint(
    log_dir: Path, rates: list[int], duration: float, closed_duration: float
) -> dict[str, Any]:
    """The same load generator against a bare FastAPI endpoint: its open-loop runs are the
    baseline of the ingest's, and its closed-loop maximum shows what the generator can offer."""
    svc = ServiceProc("trivial", "bench.trivial_app", {}, log_dir, "TRIVIAL_PORT")
    svc.start()
    try:
        svc.wait_ready()
        runs: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        cpu0 = svc.usage()["cpu_s"]
        requests = 0
        for rate in rates:
            res = run_load(
                LoadSpec(svc.port, "/v1/events", "application/json", rate, duration, f"t{rate}")
            )
            runs[str(rate)] = res.summary()
            raw[str(rate)] = res
            requests += int(res.ok.sum())
        cpu = svc.usage()["cpu_s"] - cpu0
        closed = run_load(
            LoadSpec(svc.port, "/v1/events", "application/json", None, closed_duration, "tmax")
        )
        result: dict[str, Any] = {
            "open_loop": runs,
            "closed_loop_max": closed.summary(),
            "cpu_s_per_1k": round(cpu / max(requests, 1) * 1000, 4),
            "_latencies": {k: v.latency_seconds() for k, v in raw.items()},
        }
    finally:
        used = svc.stop()
    result["peak_rss_mib"] = used["peak_rss_mib"]
    return result


async def _hop(
    bootstrap: str, topic: str, rate: float, duration: float, fetch_wait_ms: int
) -> dict[str, Any]:
    # aiokafka's defaults but for the fetch wait under test: the raw client's hop.
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = make_consumer(
        kafka,
        group_id=None,
        fetch_max_wait_ms=fetch_wait_ms,
        max_partition_fetch_bytes=1024 * 1024,
    )
    producer = make_producer(kafka, linger_ms=2, max_batch_size=16 * 1024)
    await consumer.start()
    await producer.start()
    n = int(rate * duration)
    intended = np.full(n, np.nan)
    acked = np.full(n, np.nan)
    received = np.full(n, np.nan)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)

        tag = f"{rate}-{fetch_wait_ms}-{time.monotonic_ns()}"

        async def receive() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for recs in batch.values():
                    for r in recs:
                        run, _, i = r.key.decode().partition(":")
                        if run == tag and 0 <= int(i) < n:
                            received[int(i)] = now

        reader = asyncio.create_task(receive())
        template = purchase_record("hop", 0, 1)
        t0 = time.monotonic() + 0.2
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            intended[i] = due
            fut = await producer.send(
                topic, value=template.value, key=f"{tag}:{i}".encode(), headers=template.headers
            )
            fut.add_done_callback(lambda _f, i=i: acked.__setitem__(i, time.monotonic()))
        deadline = time.monotonic() + 5
        while np.isnan(received).any() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        ok = ~np.isnan(received) & ~np.isnan(acked)
        return {
            "offered_eps": rate,
            "records": n,
            "received": int(ok.sum()),
            "latency_ms": percentiles((received - acked)[ok]),
            "latency_from_intended_ms": percentiles((received - intended)[ok]),
            "_latencies": (received - acked)[ok],
        }
    finally:
        await producer.stop()
        await consumer.stop()


def kafka_hop(
    bootstrap: str, topic: str, rate: float, duration: float, *, fetch_wait_ms: int = 20
) -> dict[str, Any]:
    """One broker hop: acks=all produce ack -> a consumer receives it, open loop at `rate`.

    `fetch_wait_ms` is the consumer's fetch_max_wait_ms: aiokafka's default (500) makes Tansu
    hold a fetch for up to ~250 ms when little data is waiting, the tierflow services' setting."""
    result = asyncio.run(_hop(bootstrap, topic, rate, duration, fetch_wait_ms))
    result["fetch_max_wait_ms"] = fetch_wait_ms
    return result
