"""Overload: the ingest offered ten times its capacity by many concurrent clients (open loop:
each request leaves at its scheduled time, whatever became of the ones before). It measures
its capacity first (closed loop, the same requests), then takes the 10x: every answer is an
acceptance, 429 or 503 — the refusals with Retry-After — within a bound, never a 500 or a
timeout; the process's resident memory stays within a ceiling over its baseline; and every
event it acknowledged is applied exactly once (the oracle, with a classifier draining)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest

from tests.access import bearer
from tests.chaos.harness import World, cloudevent, judge, wait_drained, world
from tests.support import Servers
from tierflow_common.contract import EmittedEvent

pytestmark = pytest.mark.e2e

BATCH = 500  # events a request
PER_CUSTOMER = 5  # purchases of one customer, all in one request (see `Load.body`)
ADMITTED = 16  # INGEST_MAX_CONCURRENT_REQUESTS for the scenario
TIMEOUT_S = 60.0  # the clients' own: an answer later than this is a failure (a ReadTimeout)
# Below the server's keep-alive timeout (uvicorn's 5 s): a connection reused just as the server
# closes it idle would fail the request (ReadError) for a reason that is not the overload.
KEEPALIVE_S = 2.0
# Over the baseline taken after the capacity run: ADMITTED requests of BATCH events at once
# (bodies, parsed items, records awaiting acks) are a few MiB; the refused ones cost nothing.
RSS_HEADROOM_MIB = 100


@dataclass(frozen=True)
class Size:
    overload_s: float
    clients: int  # concurrent connections at most (the open loop's pool)
    # INGEST_RATE_LIMIT_EVENTS_PER_S (and its burst): the short form's capacity is its key's
    # rate (a few thousand events to drain, whatever the machine); None: the default, and the
    # capacity is what the process's CPU gets through.
    rate_limit: int | None


SHORT = Size(overload_s=3.0, clients=200, rate_limit=1_000)
FULL = Size(overload_s=15.0, clients=400, rate_limit=None)


@dataclass
class Load:
    """Requests numbered 0, 1, ...: request `r` holds `BATCH` purchases of its own customers
    (no customer is in two requests, so no two requests in flight at once race for one
    customer's order: the oracle folds a customer's events in the order the request had)."""

    tag: str
    start: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(hours=1))

    def event(self, r: int, j: int) -> EmittedEvent:
        amount = Decimal(((r * 7919 + j * 104_729) % 2_500) * 100 + 500) / 100
        return EmittedEvent(
            id=f"{self.tag}-{r}-{j}",
            type="purchase",
            source="shop",
            subject=f"{self.tag}-c{r}-{j // PER_CUSTOMER}",
            time=self.start + timedelta(milliseconds=j),
            data={"order_id": f"{self.tag}-o{r}-{j}", "amount": f"{amount:.2f}", "currency": "USD"},
        )

    def body(self, r: int) -> bytes:
        return orjson.dumps([cloudevent(self.event(r, j)) for j in range(BATCH)])


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0
    accepted: list[tuple[int, int]] = field(default_factory=list)  # (request, item)
    slowest_s: float = 0.0


async def post(
    w: World, client: httpx.AsyncClient, load: Load, r: int, body: bytes, tally: Tally
) -> float | None:
    """Send request `r`; its accepted items go to `tally`. Returns its Retry-After, if any."""
    began = time.monotonic()
    try:
        resp = await client.post(
            f"{w.ingest.url}/v1/events:batch",
            content=body,
            headers={"content-type": "application/cloudevents-batch+json", **bearer(w.key)},
        )
    except httpx.HTTPError as exc:
        tally.errors[type(exc).__name__] += 1
        return None
    finally:
        tally.slowest_s = max(tally.slowest_s, time.monotonic() - began)
    tally.statuses[resp.status_code] += 1
    retry_after = resp.headers.get("retry-after")
    if resp.status_code in (429, 503) and retry_after is None:
        tally.missing_retry_after += 1
    if resp.status_code in (200, 503):
        for item in orjson.loads(resp.content).get("results") or ():
            if item["status"] == "accepted":
                tally.accepted.append((r, item["index"]))
    return None if retry_after is None else float(retry_after)


async def capacity(w: World, load: Load, first: int, bodies: list[bytes], seconds: float) -> float:
    """Events a second the ingest accepts from a few clients each waiting for its answer."""
    tally = Tally()
    queue = iter(range(len(bodies)))
    began = time.monotonic()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() - began < seconds:
            k = next(queue, None)
            if k is None:
                return
            wait = await post(w, client, load, first + k, bodies[k], tally)
            if wait is not None:  # a closed-loop client honours Retry-After
                await asyncio.sleep(wait)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(4)))
    assert not tally.errors, tally.errors
    assert set(tally.statuses) <= {200, 429}, tally.statuses
    w.acknowledged += [load.event(r, j) for r, j in tally.accepted]
    return len(tally.accepted) / (time.monotonic() - began)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    "size", [SHORT, pytest.param(FULL, marks=pytest.mark.chaos)], ids=["short", "full"]
)
async def test_ingest_at_ten_times_its_capacity(
    servers: Servers, log_dir: Path, size: Size, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small admission bound (the default, 128, is more requests than this machine's test
    # client keeps in flight): the requests past it are the ones answered before being read.
    monkeypatch.setenv("INGEST_MAX_CONCURRENT_REQUESTS", str(ADMITTED))
    if size.rate_limit is not None:
        monkeypatch.setenv("INGEST_RATE_LIMIT_EVENTS_PER_S", str(size.rate_limit))
        monkeypatch.setenv("INGEST_RATE_LIMIT_BURST", str(size.rate_limit))
    load = Load(tag="overload")
    async with world(servers, log_dir, classifiers=1) as w:
        assert w.ingest.proc is not None
        pid = w.ingest.proc.pid
        warm = [load.body(r) for r in range(40)]
        await capacity(w, load, 0, warm[:4], seconds=0.5)  # the producer's first batches
        measured = await capacity(w, load, 4, warm[4:], seconds=2.0)
        baseline = rss_mib(pid)
        rate = 10 * measured / BATCH  # requests a second
        bodies = [load.body(len(warm) + i) for i in range(int(rate * size.overload_s))]
        tally, peak = await overload(w, load, len(warm), bodies, rate, size.clients)
        recovery = await wait_drained(w, timeout=300)
        name = f"overload-{'full' if size is FULL else 'short'}"
        result = await judge(w, name, recovery_s=recovery, peak_rss_mib=round(peak, 1))
        result.notes.append(
            f"capacity {measured:.0f} ev/s, offered {len(bodies) * BATCH} events at "
            f"{rate * BATCH:.0f} ev/s: {dict(tally.statuses)}, slowest {tally.slowest_s:.1f}s, "
            f"RSS {baseline:.0f} -> {peak:.0f} MiB"
        )
    print(result.notes[-1])

    assert not tally.errors, tally.errors  # no timeouts, no connection refused or reset
    assert set(tally.statuses) <= {200, 429, 503}, tally.statuses
    assert tally.missing_retry_after == 0
    assert tally.statuses[429] + tally.statuses[503] > 0, "10x its capacity, nothing refused"
    assert peak < baseline + RSS_HEADROOM_MIB, f"RSS {baseline:.0f} -> {peak:.0f} MiB"
    assert result.acknowledged == len(w.acknowledged)
    assert result.passed, result


async def overload(
    w: World, load: Load, first: int, bodies: list[bytes], rate: float, clients: int
) -> tuple[Tally, float]:
    """Open loop: request `i` leaves at `i / rate` s whatever the others' fate. The ingest's
    peak resident memory is sampled throughout, until the last answer."""
    assert w.ingest.proc is not None
    pid = w.ingest.proc.pid
    tally = Tally()
    samples = [rss_mib(pid)]
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=KEEPALIVE_S
    )
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        began = time.monotonic()
        tasks = []
        for i, body in enumerate(bodies):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            samples.append(rss_mib(pid))
            tasks.append(asyncio.create_task(post(w, client, load, first + i, body, tally)))
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.05)
            samples.append(rss_mib(pid))
    w.acknowledged += [load.event(r, j) for r, j in tally.accepted]
    return tally, max(samples)
