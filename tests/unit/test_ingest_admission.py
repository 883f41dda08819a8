"""The ingest's admission bound (`INGEST_MAX_CONCURRENT_REQUESTS`) counts every events route:
a bulk upload in progress holds a place, so a request past the bound is refused at once with
503 + Retry-After whichever route it came by, and is let in again once the place is free."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
from fastapi import FastAPI

from tests.unit.test_ingest_fast_paths import (
    BATCH,
    CE,
    NOW,
    PURCHASE,
    SHOP,
    FakeKeys,
    FakeProducer,
    FakeReceipts,
    started,
)
from tierflow_ingest.entrypoints import http_io
from tierflow_ingest.entrypoints.bulk import build_bulk_router
from tierflow_ingest.entrypoints.routes import build_router
from tierflow_ingest.service_layer.intake import Intake, RateLimiter
from tierflow_ingest.settings import IngestSettings

NDJSON = {**SHOP, "content-type": "application/x-ndjson"}


def app_with_one_place() -> tuple[FastAPI, http_io.Admission]:
    settings = IngestSettings(max_concurrent_requests=1)
    intake = Intake(started(FakeProducer()), FakeReceipts())  # type: ignore[arg-type]
    limiter = RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst)
    admission = http_io.Admission(settings.max_concurrent_requests)
    app = FastAPI()
    app.include_router(
        build_router(intake, FakeKeys(), limiter, settings, admission, clock=lambda: NOW)
    )
    app.include_router(
        build_bulk_router(intake, FakeKeys(), limiter, settings, admission, clock=lambda: NOW)
    )
    return app, admission


async def test_an_upload_in_progress_holds_the_only_place_until_it_ends() -> None:
    first_line_read = asyncio.Event()
    finish = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield orjson.dumps({**PURCHASE, "id": "bulk-1"}) + b"\n"
        first_line_read.set()
        await finish.wait()
        yield orjson.dumps({**PURCHASE, "id": "bulk-2"}) + b"\n"

    app, _ = app_with_one_place()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        bulk = asyncio.create_task(client.post("/v1/events:bulk", content=upload(), headers=NDJSON))
        await asyncio.wait_for(first_line_read.wait(), 5)
        single = await client.post(
            "/v1/events", content=orjson.dumps(PURCHASE), headers={**SHOP, "content-type": CE}
        )
        batch = await client.post(
            "/v1/events:batch",
            content=orjson.dumps([{**PURCHASE, "id": "b-1"}]),
            headers={**SHOP, "content-type": BATCH},
        )
        for refused in (single, batch):
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            assert refused.headers["content-type"] == "application/problem+json"
            assert "saturated" in refused.json()["detail"]
        finish.set()
        done = await asyncio.wait_for(bulk, 5)
        assert done.status_code == 200
        assert done.json()["accepted"] == 2
        again = await client.post(
            "/v1/events", content=orjson.dumps(PURCHASE), headers={**SHOP, "content-type": CE}
        )
        assert again.status_code == 202


async def test_an_upload_past_the_bound_is_refused() -> None:
    held = asyncio.Event()

    async def slow_batch() -> AsyncIterator[bytes]:
        yield b"["
        await held.wait()
        yield orjson.dumps({**PURCHASE, "id": "b-2"}) + b"]"

    app, admission = app_with_one_place()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        batch = asyncio.create_task(
            client.post(
                "/v1/events:batch", content=slow_batch(), headers={**SHOP, "content-type": BATCH}
            )
        )
        async with asyncio.timeout(5):
            while admission.active < 1:  # the batch request is in, reading its body
                await asyncio.sleep(0.001)
        line = orjson.dumps({**PURCHASE, "id": "bulk-1"}) + b"\n"
        refused = await client.post("/v1/events:bulk", content=line, headers=NDJSON)
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        held.set()
        assert (await asyncio.wait_for(batch, 5)).status_code == 200
        assert admission.active == 0
        accepted = await client.post("/v1/events:bulk", content=line, headers=NDJSON)
        assert accepted.status_code == 200
        assert accepted.json()["accepted"] == 1


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def test_a_lagging_event_loop_sheds_new_requests_until_it_catches_up() -> None:
    admission = http_io.Admission(limit=100, shed_lag_s=0.05)
    watcher = asyncio.create_task(admission.watch_loop(interval_s=0.01, smoothing_s=0.1))
    try:
        await asyncio.sleep(0.05)
        assert admission.enter()  # an idle loop lets requests in
        admission.leave()
        for _ in range(10):  # CPU-bound work holding the loop, as a parse of a large batch does
            busy(0.1)
            await asyncio.sleep(0)
        assert admission.lag_s > 0.05
        assert not admission.enter()
        assert admission.active == 0
        saturated = http_io.saturated(IngestSettings(), admission)
        assert saturated.status_code == 503
        assert saturated.headers["retry-after"]
        assert b"event loop lags" in saturated.body
        async with asyncio.timeout(5):
            while admission.lagging():  # the loop free again: the average decays
                await asyncio.sleep(0.01)
        assert admission.enter()
    finally:
        watcher.cancel()


async def test_shedding_on_lag_can_be_turned_off() -> None:
    admission = http_io.Admission(limit=1, shed_lag_s=0.0, lag_s=10.0)
    assert admission.enter()
    assert not admission.enter()  # the concurrency bound still holds
