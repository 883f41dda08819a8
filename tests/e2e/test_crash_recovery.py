"""SIGKILL the classifier in the middle of 10,000 purchases: after a restart, every customer's
purchase count and net spend equal exactly what was sent — nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.e2e.conftest import Pipeline
from tests.support import read_topic
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import customers

pytestmark = pytest.mark.e2e

EVENTS = 10_000
CUSTOMERS = 200
BATCH = 500


def make_events(seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    for i in range(EVENTS):
        cents = rnd.randint(1, 500_000)
        events.append(
            {
                "specversion": "1.0",
                "id": f"crash-{i}",
                "source": "pos",
                "type": "purchase",
                "subject": f"cust-{rnd.randrange(CUSTOMERS)}",
                "time": (start + timedelta(minutes=i)).isoformat(),
                "data": {"order_id": str(i), "amount": f"{cents / 100:.2f}", "currency": "USD"},
            }
        )
    return events


async def applied_purchases(pipeline: Pipeline) -> int:
    engine = create_engine(pipeline.database)
    try:
        async with engine.connect() as conn:
            total = await conn.scalar(
                select(func.coalesce(func.sum(customers.c.purchases_lifetime), 0))
            )
            return int(total or 0)
    finally:
        await engine.dispose()


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(pipeline: Pipeline) -> None:
    events = make_events(seed=7)
    expected_count: dict[str, int] = defaultdict(int)
    expected_spend: dict[str, Decimal] = defaultdict(Decimal)
    for e in events:
        expected_count[str(e["subject"])] += 1
        expected_spend[str(e["subject"])] += Decimal(str(e["data"]["amount"]))

    async with httpx.AsyncClient(timeout=30, headers=pipeline.auth) as client:
        sent = 0
        killed = False
        for start in range(0, EVENTS, BATCH):
            chunk = events[start : start + BATCH]
            resp = await client.post(
                f"{pipeline.ingest.url}/v1/events:batch",
                json=chunk,
                headers={"content-type": "application/cloudevents-batch+json", **pipeline.auth},
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["accepted"] == len(chunk)
            sent += len(chunk)
            if not killed and sent >= EVENTS // 2:
                # Kill as soon as the classifier is visibly part-way through the stream.
                deadline = time.monotonic() + 30
                while await applied_purchases(pipeline) == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                pipeline.classifier.kill()
                killed = True
                applied_at_kill = await applied_purchases(pipeline)
                assert 0 < applied_at_kill < EVENTS
        # Resend a slice (an upstream retry storm); the ledger must absorb it.
        resp = await client.post(
            f"{pipeline.ingest.url}/v1/events:batch",
            json=events[:BATCH],
            headers={"content-type": "application/cloudevents-batch+json", **pipeline.auth},
        )
        assert resp.status_code == 200

        pipeline.classifier.start()
        deadline = time.monotonic() + 120
        while await applied_purchases(pipeline) < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

        got: dict[str, dict[str, object]] = {}
        for cid in expected_count:
            resp = await client.get(f"{pipeline.classifier.url}/v1/customers/{cid}")
            assert resp.status_code == 200, resp.text
            got[cid] = resp.json()["features"]

    assert await applied_purchases(pipeline) == EVENTS
    for cid, count in expected_count.items():
        assert got[cid]["purchases_lifetime"] == count, cid
        assert Decimal(str(got[cid]["net_spend_lifetime"])) == expected_spend[cid], cid

    # The last tier-change on the wire for every customer equals its current tier.
    changes = await read_topic(
        pipeline.kafka, pipeline.topics.tier_changed, expect=10**9, timeout=5
    )
    last: dict[str, str] = {}
    for c in changes:
        last[c["event"]["subject"]] = c["event"]["data"]["to"]
    async with httpx.AsyncClient(timeout=30, headers=pipeline.auth) as client:
        for cid in expected_count:
            resp = await client.get(f"{pipeline.classifier.url}/v1/customers/{cid}")
            assert last[cid] == resp.json()["dimensions"]["value_tier"]["label"], cid
