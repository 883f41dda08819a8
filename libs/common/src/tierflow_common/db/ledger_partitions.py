"""Time-partitioned dedup ledgers (`processed_events`, `ingest_receipts`) that do not grow forever.

Both tables are range-partitioned by week on the event's own time (CloudEvents `time`, the same
on every resend of an event), so the primary key (source, event_id, event_time) still catches
every resend. What one table's partitions need, shared by the classifier and the ingest:

- **Retention.** A ledger remembers events whose time is within `retention` of the wall clock
  ("the window"). Its *horizon* is the start of the week holding `now - retention`; a week is
  dropped once it ends more than `retention` (plus an hour's grace for clocks that differ
  between processes) before `now`, so every partition at or after the horizon still exists.
  An event older than the horizon is not written to the ledger at all: the ledger could not
  remember it past the next maintenance round anyway. Callers treat it as new, and the
  classifier's natural keys (order id per customer for purchases and refunds) keep it from
  counting twice. The clock is the wall clock for both services, also in replay mode: the
  window bounds disk, and a replay that must dedupe old resends by id raises the retention.
- **Partitions before rows.** Maintenance (start-up, then hourly) creates the current week
  and `ahead` weeks after it; a batch with an event in a week that has no partition yet (an
  older week inside the window, or one further ahead) creates it on demand in a short
  separate transaction. Which weeks exist is cached in-process, so in the steady state a claim
  costs no extra round trip. There is no DEFAULT partition: every row has a week to go to.
- **Concurrency.** Creation runs under a transaction-scoped advisory lock per table and looks
  at the catalog again under it, so any number of processes may race to create the same
  week; a new week is created standalone and ATTACHed (a SHARE UPDATE EXCLUSIVE lock on the
  parent, which concurrent inserts do not wait for, unlike `CREATE TABLE ... PARTITION OF`).
  Drops are elected by a session advisory try-lock (one process does them) and use
  `DETACH PARTITION ... CONCURRENTLY` then `DROP TABLE`, which never blocks the inserts
  either; a detach interrupted midway is finalized on the next round.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_common.exceptions import TransientError
from tierflow_common.metrics import ROWS_PRUNED
from tierflow_common.transient import is_transient

log = structlog.get_logger(__name__)

WEEK = timedelta(days=7)
DEFAULT_RETENTION_DAYS = 30
# Weeks are Monday 00:00 UTC to the next Monday (1970-01-05 was a Monday).
_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)
# A partition is dropped this long after it left the window, so a process whose clock is up to
# this much behind the one dropping never writes into a week that is gone.
GRACE = timedelta(hours=1)


def utc_now() -> datetime:
    """The wall clock every ledger judges its window by (tests move it)."""
    return datetime.now(UTC)


def week_start(t: datetime) -> datetime:
    """Monday 00:00 UTC of the week holding `t`."""
    return _MONDAY + ((t - _MONDAY) // WEEK) * WEEK


def horizon(now: datetime, retention: timedelta) -> datetime:
    """The oldest event time a ledger still remembers: the start of the week of now - retention."""
    return week_start(now - retention)


def partition_name(table: str, week: datetime) -> str:
    return f"{table}_w{week:%Y%m%d}"


@dataclass(frozen=True)
class Partition:
    """One partition of a ledger: [lower, upper) of event time; None is MINVALUE / MAXVALUE."""

    name: str
    lower: datetime | None
    upper: datetime | None
    detach_pending: bool = False


class Coverage:
    """The event times the attached partitions cover, as disjoint ranges with adjacent ones
    merged: a batch whose oldest and newest times fall in one range is covered throughout."""

    def __init__(self, partitions: Iterable[Partition] = ()) -> None:
        ranges = sorted(
            (p.lower or _MIN, p.upper or _MAX) for p in partitions if not p.detach_pending
        )
        lows: list[datetime] = []
        highs: list[datetime] = []
        for lo, hi in ranges:
            if highs and lo <= highs[-1]:
                highs[-1] = max(highs[-1], hi)
            else:
                lows.append(lo)
                highs.append(hi)
        self._lows, self._highs = lows, highs

    def _range(self, t: datetime) -> int:
        i = bisect.bisect_right(self._lows, t) - 1
        return i if i >= 0 and t < self._highs[i] else -1

    def covers(self, t: datetime) -> bool:
        return self._range(t) >= 0

    def covers_span(self, lo: datetime, hi: datetime) -> bool:
        """Every time in [lo, hi] has a partition."""
        i = self._range(lo)
        return i >= 0 and hi < self._highs[i]

    def covers_week(self, week: datetime) -> bool:
        return self.covers_span(week, week + WEEK - timedelta(microseconds=1))

    def overlaps_week(self, week: datetime) -> bool:
        end = week + WEEK
        i = bisect.bisect_left(self._lows, end) - 1
        return i >= 0 and self._highs[i] > week


@dataclass(frozen=True)
class Plan:
    create: list[datetime]  # week starts
    drop: list[Partition]


def plan(
    partitions: Sequence[Partition],
    *,
    now: datetime,
    retention: timedelta,
    ahead_weeks: int,
    grace: timedelta = GRACE,
) -> Plan:
    """What one maintenance round does: create the current week and `ahead_weeks` after it where
    no partition covers them; drop every partition that ended before now - retention - grace."""
    coverage = Coverage(partitions)
    current = week_start(now)
    create = [
        w
        for w in (current + k * WEEK for k in range(ahead_weeks + 1))
        if not coverage.overlaps_week(w)
    ]
    cutoff = now - retention - grace
    drop = [p for p in partitions if p.upper is not None and p.upper <= cutoff]
    return Plan(create, drop)


class LedgerPartitionMissing(TransientError):
    """A ledger row had no partition to go to (it was dropped behind this process's back, or
    could not be created just now): retried, never dead-lettered; the next try creates it."""


def is_missing_partition(exc: BaseException) -> bool:
    """An insert found no partition for its row: from SQLAlchemy, or straight from asyncpg."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code == "23514" and "no partition of relation" in str(cause)


_PARTITIONS = text(
    "SELECT c.relname AS name, "
    "CAST(nullif(btrim(b.m[1], ''''), 'MINVALUE') AS timestamptz) AS lower, "
    "CAST(nullif(btrim(b.m[2], ''''), 'MAXVALUE') AS timestamptz) AS upper, "
    "i.inhdetachpending AS detach_pending "
    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid), "
    "'FROM \\((.+?)\\) TO \\((.+?)\\)') AS m) AS b "
    "WHERE i.inhparent = CAST(:parent AS regclass) ORDER BY 2 NULLS FIRST"
)
# Weekly tables left standalone by a drop interrupted between its DETACH and its DROP.
_ORPHANS = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND NOT c.relispartition "
    "AND c.relname LIKE :pattern ESCAPE '!'"
)


async def read_partitions(conn: AsyncConnection, table: str) -> list[Partition]:
    rows = await conn.execute(_PARTITIONS, {"parent": table})
    return [Partition(r.name, r.lower, r.upper, bool(r.detach_pending)) for r in rows]


def _literal(t: datetime) -> str:
    return "'" + t.astimezone(UTC).isoformat(sep=" ") + "'"


class LedgerPartitions:
    """The weekly partitions of one ledger table: the in-process knowledge of which exist, the
    on-demand creation a batch may need, and the maintenance round (create ahead, drop old)."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: str,
        *,
        retention: timedelta = timedelta(days=DEFAULT_RETENTION_DAYS),
        ahead_weeks: int = 2,
        interval_s: float = 3_600.0,
        lock_timeout_s: float = 10.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        self.engine = engine
        self.table = table
        self.retention = retention
        self.ahead_weeks = ahead_weeks
        self.interval_s = interval_s
        self._lock_timeout = f"{int(lock_timeout_s * 1000)}ms"
        self._clock = clock
        self._coverage = Coverage()
        self._create_lock = f"tierflow.ledger.create:{table}"
        self._drop_lock = f"tierflow.ledger.drop:{table}"
        self._stopping = asyncio.Event()

    def now(self) -> datetime:
        return (self._clock or utc_now)()

    def horizon(self) -> datetime:
        return horizon(self.now(), self.retention)

    def forget(self) -> None:
        """Drop what this process believes exists (a partition went missing under it)."""
        self._coverage = Coverage()

    async def prepare(self, times: Sequence[datetime]) -> datetime:
        """Make sure every time at or after the horizon has a partition; return the horizon.

        Times older than the horizon are beyond the window: the caller does not write them.
        Without I/O when the cached partitions already cover the batch (the steady state).
        """
        h = self.horizon()
        if not times:
            return h
        lo, hi = min(times), max(times)
        if hi < h:
            return h
        if lo < h:
            lo = min(t for t in times if t >= h)
        if self._coverage.covers_span(lo, hi):
            return h
        weeks = sorted({week_start(t) for t in times if t >= h and not self._coverage.covers(t)})
        if weeks:
            try:
                await self.ensure(weeks)
            except Exception as exc:
                if is_transient(exc):
                    raise
                # Nothing is wrong with the events: retry the batch, never dead-letter it.
                raise LedgerPartitionMissing(
                    f"could not create {self.table} partitions for {weeks[0]:%Y-%m-%d}..: {exc}"
                ) from exc
        return h

    async def ensure(self, weeks: Sequence[datetime]) -> list[str]:
        """Create the partitions of these weeks where none exists (own transaction, elected by an
        advisory lock, the catalog read again under it). Returns the names created."""
        created: list[str] = []
        async with self.engine.begin() as conn:
            await conn.execute(text(f"SET LOCAL lock_timeout = '{self._lock_timeout}'"))
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": self._create_lock},
            )
            partitions = await read_partitions(conn, self.table)
            coverage = Coverage(partitions)
            for week in sorted(set(weeks)):
                if coverage.covers_week(week):
                    continue
                if coverage.overlaps_week(week):
                    raise RuntimeError(
                        f"{self.table}: the week of {week:%Y-%m-%d} is partly covered by a "
                        "partition with other bounds; create its partition by hand"
                    )
                name = partition_name(self.table, week)
                # IF NOT EXISTS: a week left standalone by an interrupted drop is re-attached.
                await conn.execute(
                    text(
                        f'CREATE TABLE IF NOT EXISTS "{name}" '
                        f'(LIKE "{self.table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
                    )
                )
                await conn.execute(
                    text(
                        f'ALTER TABLE "{self.table}" ATTACH PARTITION "{name}" '
                        f"FOR VALUES FROM ({_literal(week)}) TO ({_literal(week + WEEK)})"
                    )
                )
                partitions.append(Partition(name, week, week + WEEK))
                created.append(name)
        self._coverage = Coverage(partitions)
        if created:
            log.info("ledger_partitions_created", table=self.table, partitions=created)
        return created

    async def maintain(self) -> tuple[list[str], list[str]]:
        """One round: create the current and the next weeks, drop the partitions past the
        window (if no other process is dropping). Returns (created, dropped) names."""
        now = self.now()
        async with self.engine.connect() as conn:
            partitions = await read_partitions(conn, self.table)
        p = plan(partitions, now=now, retention=self.retention, ahead_weeks=self.ahead_weeks)
        if p.create:
            created = await self.ensure(p.create)  # refreshes the cache too
        else:
            created = []
            self._coverage = Coverage(partitions)
        # Dropped weeks lie before the horizon (by the grace, at least): no claim targets them,
        # so the cache may keep them.
        dropped = await self._drop(now)
        return created, dropped

    async def _drop(self, now: datetime) -> list[str]:
        dropped: list[str] = []
        async with self.engine.connect() as pooled:
            # DETACH ... CONCURRENTLY cannot run inside a transaction block.
            conn = await pooled.execution_options(isolation_level="AUTOCOMMIT")
            elected = await conn.scalar(
                text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                {"k": self._drop_lock},
            )
            if not elected:
                return dropped
            try:
                await conn.execute(text(f"SET lock_timeout = '{self._lock_timeout}'"))
                partitions = await read_partitions(conn, self.table)
                p = plan(partitions, now=now, retention=self.retention, ahead_weeks=0)
                for part in p.drop:
                    mode = "FINALIZE" if part.detach_pending else "CONCURRENTLY"
                    await conn.execute(
                        text(f'ALTER TABLE "{self.table}" DETACH PARTITION "{part.name}" {mode}')
                    )
                    await self._drop_table(conn, part.name)
                    dropped.append(part.name)
                cutoff = now - self.retention - GRACE
                escaped = self.table.replace("!", "!!").replace("_", "!_").replace("%", "!%")
                for (name,) in await conn.execute(_ORPHANS, {"pattern": f"{escaped}!_w%"}):
                    week = _week_of(self.table, name)
                    if week is not None and week + WEEK <= cutoff:
                        await self._drop_table(conn, name)
                        dropped.append(name)
            finally:
                with suppress(Exception):
                    await conn.execute(text("RESET lock_timeout"))
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"),
                        {"k": self._drop_lock},
                    )
        if dropped:
            log.info("ledger_partitions_dropped", table=self.table, partitions=dropped)
        return dropped

    async def _drop_table(self, conn: AsyncConnection, name: str) -> None:
        """Drop a detached week, counting its rows as pruned (read once, off the stream: the
        week is no partition any more)."""
        rows = await conn.scalar(text(f'SELECT count(*) FROM "{name}"'))  # noqa: S608 - ours
        await conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
        ROWS_PRUNED.labels(table=self.table).inc(int(rows or 0))

    async def run(self) -> None:
        """Maintain at start-up and every `interval_s` until stop(); a failed round (database
        away) is logged and retried within half a minute."""
        while not self._stopping.is_set():
            delay = self.interval_s
            try:
                await self.maintain()
            except Exception as exc:
                log.warning("ledger_maintenance_failed", table=self.table, error=str(exc))
                delay = min(delay, 30.0)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def stop(self) -> None:
        self._stopping.set()


def _week_of(table: str, name: str) -> datetime | None:
    try:
        return datetime.strptime(name.removeprefix(f"{table}_w"), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
