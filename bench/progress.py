"""Watching a consumer drain a pre-loaded topic (through PostgreSQL), and py-spy profiles."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from tierflow_common.outbox import backlog

PY_SPY_ENV = "BENCH_PY_SPY"


@dataclass
class Sample:
    t: float
    consumed: int
    outbox: int


@dataclass
class Drain:
    """Progress samples of one consumer group working through `total` records."""

    total: int
    samples: list[Sample] = field(default_factory=list)
    rows: int = 0  # of the table the consumer writes, counted once the watch is over

    def first_progress(self) -> Sample | None:
        return next((s for s in self.samples if s.consumed > 0), None)

    def rate(self) -> float:
        """Records/s from the first committed batch to the last sample (start-up excluded)."""
        first = self.first_progress()
        last = self.samples[-1] if self.samples else None
        if first is None or last is None or last.t <= first.t:
            return 0.0
        return (last.consumed - first.consumed) / (last.t - first.t)

    def done_at(self) -> float | None:
        return next((s.t for s in self.samples if s.consumed >= self.total and s.outbox == 0), None)

    def summary(self) -> dict[str, Any]:
        first = self.first_progress()
        last = self.samples[-1] if self.samples else Sample(0, 0, 0)
        done = self.done_at()
        return {
            "records": self.total,
            "consumed": last.consumed,
            "rows": self.rows,
            "outbox_left": last.outbox,
            "seconds_measured": round(last.t - first.t, 2) if first else 0.0,
            "first_commit_after_s": round(first.t, 2) if first else None,
            "drained_after_s": round(done, 2) if done is not None else None,
            "records_per_s": round(self.rate(), 1),
            # Applied *and* published (outbox empty), from the first commit on.
            "completed_per_s": round((self.total - first.consumed) / (done - first.t), 1)
            if first is not None and done is not None and done > first.t
            else None,
        }


# Records a consumer group has applied: its stored next offsets (the bench's topics start at 0).
APPLIED = "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = $1"


def watch_drain(
    dsn: str,
    *,
    group: str,
    producer: str,
    table: str,
    total: int,
    max_seconds: float,
    on_first_progress: Callable[[asyncpg.Connection, int], Awaitable[None]] | None = None,
) -> Drain:
    """Poll consumer_offsets / outbox until drained or `max_seconds` passed, then count `table`;
    `on_first_progress` is awaited once, at the first sample with a committed batch, with the
    watcher's connection and the records applied so far."""

    async def watch() -> Drain:
        drain = Drain(total)
        notify = on_first_progress
        conn = await asyncpg.connect(dsn)
        try:
            t0 = time.monotonic()
            while True:
                consumed = await conn.fetchval(APPLIED, group)
                outbox = await backlog(conn, producer)
                now = time.monotonic() - t0
                drain.samples.append(Sample(now, int(consumed), int(outbox)))
                if notify is not None and consumed > 0:
                    await notify(conn, int(consumed))
                    notify = None
                if consumed >= total and outbox == 0:
                    break
                # The time box runs from the first committed batch (start-up and the consumer
                # group's first rebalance excluded), with at most 20 s more for that start-up.
                first = drain.first_progress()
                if now > max_seconds + 20 or (first is not None and now - first.t > max_seconds):
                    break
                await asyncio.sleep(0.25)
            # Once, at the end: counted on every tick, a table of a million customers cost the
            # server being measured a scan four times a second.
            # The table name is ours (customers or care_actions), never input.
            drain.rows = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
            return drain
        finally:
            await conn.close()

    return asyncio.run(watch())


async def _idle(dsn: str, timeout: float) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM outbox") == 0:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await conn.close()


def wait_outbox_empty(dsn: str, timeout: float) -> bool:
    return asyncio.run(_idle(dsn, timeout))


def service_costs(
    name: str,
    used: dict[str, Any],
    infra: tuple[dict[str, float], dict[str, float]],
    done: int,
    wall: float,
    extra_cpu_s: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A drained service's CPU (total, per 1,000 records, share of a core), the servers' CPU
    (`infra` = before, after) and peak RSS; `extra_cpu_s` adds helper processes' CPU shares."""
    before, after = infra
    return {
        "cpu_s": used["cpu_s"],
        "cpu_s_per_1k": round(used["cpu_s"] / done * 1000, 4) if done else None,
        "infra_cpu_s_per_1k": {
            k: round((after[k] - before[k]) / done * 1000, 4) if done else None for k in after
        },
        "peak_rss_mib": used["peak_rss_mib"],
        "cpu_util": {
            name: round(used["cpu_s"] / wall, 2),
            **{k: round(v / wall, 2) for k, v in (extra_cpu_s or {}).items()},
            **{k: round((after[k] - before[k]) / wall, 2) for k in after},
        },
    }


def py_spy() -> str | None:
    return os.environ.get(PY_SPY_ENV) or shutil.which("py-spy")


class Profile:
    """`py-spy record` of one process for a while, as collapsed stacks; `top()` sums them up."""

    def __init__(self, pid: int, seconds: int, out: Path) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = py_spy()
        if exe is None:
            return
        self.proc = subprocess.Popen(
            [
                exe, "record", "-p", str(pid), "-d", str(seconds), "-r", "100",
                "-f", "raw", "-o", str(out), "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def top(self, n: int = 12) -> dict[str, Any]:
        if self.proc is None:
            return {"error": f"py-spy not found (set {PY_SPY_ENV})"}
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not self.out.exists():
            return {"error": "py-spy wrote nothing"}
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [f.split(" (")[0] + " (" + _module(f) + ")" for f in stack.split(";")]
            total += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[frame] += int(count)
        return {
            "samples": total,
            "file": self.out.name,
            "self": {k: round(v / total * 100, 1) for k, v in own.most_common(n)},
            "inclusive": {
                k: round(v / total * 100, 1)
                for k, v in inclusive.most_common(n * 4)
                if "tierflow" in k or "sqlalchemy" in k or "aiokafka" in k or "pydantic" in k
            },
        }


def _module(frame: str) -> str:
    inside = frame.split(" (", 1)[1] if " (" in frame else ""
    path = inside.split(":")[0]
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 2)[-1] if path else "?"
