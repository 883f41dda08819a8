"""A multi-process, open-loop HTTP load generator (coordinated omission corrected).

Each worker process owns every `workers`-th request of a fixed schedule: request i is due at
`start + i / rate`, whatever the server is doing. Due requests go into a queue that a pool of
keep-alive connections drains, so a slow server makes requests wait, never the schedule. Latency
is measured from the *intended* send time (the queue wait counts), and also from the actual
send (the "service time" that a closed-loop tool would report). With `rate=None` the workers run
closed-loop instead: every connection sends back to back (used for max-throughput figures).

The HTTP/1.1 client is a few lines over asyncio transports (uvloop), far cheaper per request than
a general-purpose client, so two worker processes can offer more than one service process takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import cast

import numpy as np

AMOUNTS = ("19.90", "129.90", "480.00", "1250.00", "5200.00")


@dataclass(frozen=True)
class LoadSpec:
    port: int
    path: str
    content_type: str
    rate: float | None  # requests/s over all workers; None = closed loop
    duration: float
    prefix: str  # unique per run: event ids and fresh customer ids derive from it
    batch: int = 0  # 0 = one event object per request; n >= 1 = a JSON array of n events
    customers: int | None = None  # None = a fresh customer per event
    connections: int = 32  # per worker
    workers: int = 2
    api_key: str | None = None  # sent as `Authorization: Bearer <key>`


@dataclass
class LoadResult:
    spec: LoadSpec
    intended: np.ndarray  # monotonic seconds, one per request index
    sent: np.ndarray
    done: np.ndarray
    status: np.ndarray  # HTTP status, 0 = connection error, -1 = never sent

    @property
    def ok(self) -> np.ndarray:
        return (self.status >= 200) & (self.status < 300)

    def latency_seconds(self) -> np.ndarray:
        """Latency from the intended send time of every successful request."""
        return np.asarray((self.done - self.intended)[self.ok], dtype=float)

    def summary(self) -> dict[str, object]:
        sent = self.status != -1
        ok = self.ok
        window = float(self.done[ok].max() - self.intended.min()) if ok.any() else 0.0
        lat = (self.done - self.intended)[ok]
        svc = (self.done - self.sent)[ok]
        per = max(self.spec.batch, 1)
        codes: dict[str, int] = {}
        for code in np.unique(self.status[sent & ~ok]):
            codes[str(int(code))] = int(np.sum(self.status == code))
        return {
            "offered_rps": self.spec.rate,
            "events_per_request": per,
            "requests": len(self.status),
            "sent": int(sent.sum()),
            "ok": int(ok.sum()),
            "errors": codes,
            "throughput_rps": round(int(ok.sum()) / window, 1) if window > 0 else 0.0,
            "throughput_eps": round(int(ok.sum()) * per / window, 1) if window > 0 else 0.0,
            "latency_ms": percentiles(lat),
            "service_time_ms": percentiles(svc),
        }


PCTS = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentiles(seconds: np.ndarray) -> dict[str, float]:
    if len(seconds) == 0:
        return {}
    out = {f"p{p:g}": round(float(np.percentile(seconds, p)) * 1000, 2) for p in PCTS}
    out["max"] = round(float(seconds.max()) * 1000, 2)
    return out


def event_json(prefix: str, i: int, j: int, customers: int | None, when: str) -> str:
    subject = f"{prefix}-c{i}-{j}" if customers is None else f"c{(i * 7919 + j) % customers}"
    amount = AMOUNTS[(i + j) % len(AMOUNTS)]
    return (
        f'{{"specversion":"1.0","id":"{prefix}-{i}-{j}","source":"bench","type":"purchase",'
        f'"subject":"{subject}","time":"{when}",'
        f'"data":{{"order_id":"{i}-{j}","amount":"{amount}","currency":"USD"}}}}'
    )


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else None])
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))
        self.transport = None


async def _worker(spec: LoadSpec, index: int, start_at: float) -> dict[str, np.ndarray]:
    loop = asyncio.get_running_loop()
    head = (
        f"POST {spec.path} HTTP/1.1\r\nhost: 127.0.0.1:{spec.port}\r\n"
        f"content-type: {spec.content_type}\r\n"
        + (f"authorization: Bearer {spec.api_key}\r\n" if spec.api_key else "")
        + "content-length: "
    ).encode()
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    closed = spec.rate is None
    total = 10**9 if closed else int(spec.rate * spec.duration)  # type: ignore[operator]
    mine = range(index, total, spec.workers)
    cap = len(mine) if not closed else 2_000_000
    intended = np.full(cap, np.nan)
    sent = np.full(cap, np.nan)
    done = np.full(cap, np.nan)
    status = np.full(cap, -1, dtype=np.int16)
    queue: asyncio.Queue[int] = asyncio.Queue()
    end_at = start_at + spec.duration
    counter = iter(range(cap))

    def body(i: int) -> bytes:
        if spec.batch == 0:
            text = event_json(spec.prefix, i, 0, spec.customers, when)
        else:
            items = (event_json(spec.prefix, i, j, spec.customers, when) for j in range(spec.batch))
            text = "[" + ",".join(items) + "]"
        raw = text.encode()
        return head + str(len(raw)).encode() + b"\r\n\r\n" + raw

    async def connect() -> _Conn:
        _, proto = await loop.create_connection(_Conn, "127.0.0.1", spec.port)
        return proto

    async def one(conn: _Conn, k: int, i: int) -> _Conn:
        data = body(i)
        if conn.transport is None or conn.transport.is_closing():
            conn = await connect()
        sent[k] = time.monotonic()
        conn.waiter = loop.create_future()
        try:
            assert conn.transport is not None
            conn.transport.write(data)
            status[k] = await conn.waiter
        except (ConnectionError, AssertionError):
            status[k] = 0
            conn = await connect()
        done[k] = time.monotonic()
        return conn

    async def drain_queue() -> None:
        conn = await connect()
        while True:
            k = await queue.get()
            conn = await one(conn, k, mine[k])

    async def closed_loop() -> None:
        conn = await connect()
        while time.monotonic() < end_at:
            k = next(counter)
            intended[k] = time.monotonic()
            conn = await one(conn, k, index + k * spec.workers)

    await asyncio.sleep(max(start_at - time.monotonic(), 0))
    if closed:
        await asyncio.gather(*(closed_loop() for _ in range(spec.connections)))
        n = int(np.sum(status != -1))
        return {"intended": intended[:n], "sent": sent[:n], "done": done[:n], "status": status[:n]}
    pool = [asyncio.create_task(drain_queue()) for _ in range(spec.connections)]
    rate = float(spec.rate)  # type: ignore[arg-type]
    k = 0
    while k < len(mine):
        now = time.monotonic()
        while k < len(mine) and start_at + mine[k] / rate <= now:
            intended[k] = start_at + mine[k] / rate
            queue.put_nowait(k)
            k += 1
        if k < len(mine):
            await asyncio.sleep(max(start_at + mine[k] / rate - time.monotonic(), 0.0005))
    grace = time.monotonic() + max(10.0, spec.duration)
    while np.isnan(done).any() and time.monotonic() < grace:
        await asyncio.sleep(0.05)
    for task in pool:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pool, return_exceptions=True)
    return {"intended": intended, "sent": sent, "done": done, "status": status}


def _entry(spec: LoadSpec, index: int, start_at: float, out: Connection) -> None:
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415

        uvloop.install()
    out.send(asyncio.run(_worker(spec, index, start_at)))
    out.close()


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load on `spec.workers` processes and merge their timings by request index."""
    ctx = mp.get_context("spawn")
    start_at = time.monotonic() + 1.0 + 0.2 * spec.workers  # after the workers imported
    pipes: list[Connection] = []
    procs = []
    for index in range(spec.workers):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_entry, args=(spec, index, start_at, send), daemon=True)
        proc.start()
        send.close()
        pipes.append(recv)
        procs.append(proc)
    parts = [p.recv() for p in pipes]
    for proc in procs:
        proc.join(10)
    if spec.rate is None:
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return LoadResult(spec, **merged)
    total = int(spec.rate * spec.duration)
    merged = {}
    for key in ("intended", "sent", "done"):
        merged[key] = np.full(total, np.nan)
    merged["status"] = np.full(total, -1, dtype=np.int16)
    for index, part in enumerate(parts):
        for key, arr in part.items():
            merged[key][index : total : spec.workers] = arr
    return LoadResult(spec, **merged)
