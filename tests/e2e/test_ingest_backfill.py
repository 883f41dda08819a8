"""Backfills and resends through the running ingest: constant memory for a large NDJSON upload,
and an event resent three times is counted once by the classifier."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psutil
import pytest

from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.e2e

# 1,000,000 for the figure in the docs; the default keeps `make test` quick.
LINES = int(os.environ.get("TIERFLOW_BACKFILL_LINES", "200000"))


async def ndjson(lines: int) -> AsyncIterator[bytes]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    chunk: list[bytes] = []
    for i in range(lines):
        chunk.append(
            orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": f"bf-{i}",
                    "source": "erp",
                    "type": "purchase",
                    "subject": f"bf-cust-{i % 5000}",
                    "time": (start + timedelta(seconds=i)).isoformat(),
                    "data": {"order_id": f"o{i}", "amount": "10.50", "currency": "USD"},
                }
            )
        )
        if len(chunk) == 1000:
            yield b"\n".join(chunk) + b"\n"
            chunk = []
    if chunk:
        yield b"\n".join(chunk) + b"\n"


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)


async def test_large_ndjson_backfill_is_accepted_in_constant_memory(pipeline: Pipeline) -> None:
    assert pipeline.ingest.proc is not None
    sampler = RssSampler(pipeline.ingest.proc.pid)
    sampler.start()
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as client:
        resp = await client.post(
            f"{pipeline.ingest.url}/v1/events:bulk",
            content=ndjson(LINES),
            headers={"content-type": "application/x-ndjson", **pipeline.auth},
        )
    elapsed = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    assert resp.status_code == 200, resp.text[:500]
    body = resp.json()
    assert (body["lines"], body["accepted"], body["rejected"]) == (LINES, LINES, 0)
    growth_mb = (sampler.peak - sampler.baseline) / 2**20
    print(
        f"\nbulk backfill: {LINES} lines in {elapsed:.1f}s ({LINES / elapsed:,.0f}/s), "
        f"ingest RSS {sampler.baseline / 2**20:.0f} MB -> peak {sampler.peak / 2**20:.0f} MB "
        f"(+{growth_mb:.0f} MB)"
    )
    # Bounded by one publish chunk and the client libraries' buffers, not by the upload's size.
    assert growth_mb < 80


async def test_event_resent_three_times_is_counted_once(pipeline: Pipeline) -> None:
    event = {
        "specversion": "1.0",
        "id": "resend-1",
        "source": "shop",
        "type": "purchase",
        "subject": "resend-cust",
        "time": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "data": {"order_id": "r1", "amount": "42.00", "currency": "USD"},
    }
    headers = {"content-type": "application/cloudevents+json", **pipeline.auth}
    async with httpx.AsyncClient(timeout=10, headers=pipeline.auth) as client:
        answers = [
            (await client.post(f"{pipeline.ingest.url}/v1/events", json=event, headers=headers))
            for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [202] * 4
        assert [a.json()["duplicate"] for a in answers] == [False, True, True, True]
        # A second, different event proves the classifier has consumed past the resends.
        marker = {**event, "id": "resend-2", "data": {**event["data"], "order_id": "r2"}}  # type: ignore[dict-item]
        assert (
            await client.post(f"{pipeline.ingest.url}/v1/events", json=marker, headers=headers)
        ).status_code == 202
        deadline = time.monotonic() + 20
        features: dict[str, object] = {}
        while time.monotonic() < deadline:
            got = await client.get(f"{pipeline.classifier.url}/v1/customers/resend-cust")
            if got.status_code == 200:
                features = got.json()["features"]
                if features["purchases_lifetime"] == 2:
                    break
            await asyncio.sleep(0.05)
    assert features["purchases_lifetime"] == 2
    assert features["net_spend_lifetime"] == "84"
