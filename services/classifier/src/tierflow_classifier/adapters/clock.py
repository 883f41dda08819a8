"""The classifier's notion of "now", and the only place that knows wall time from event time.

Production runs on the wall clock. Replay runs on the event-time watermark (the slowest
partition's latest event time), so replaying history reproduces the time-driven transitions
that would have happened. Everything that differs between the two — the instant an event is
judged at, whether applying events moves the clock, how long the scheduler may sleep, when the
population is rebuilt and the churn model refitted — is a method here; callers never ask which
clock they have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_classifier.adapters import repository as repo

ClockMode = Literal["wall", "event_time"]


class Watermarks(Protocol):
    """Where the event-time clock keeps each input partition's latest applied event time."""

    async def read(self) -> datetime | None: ...

    async def advance(self, partition: str, to: datetime) -> None: ...


@dataclass(frozen=True)
class RefreshPolicy:
    """How often the population statistics are rebuilt. Wall clock: every `every`. Event time:
    whenever the watermark advanced by `step` since the last population, or advanced at all
    and then stood still for `settle_s` wall seconds. Never two attempts within `min_gap_s`."""

    every: timedelta = timedelta(minutes=10)
    step: timedelta = timedelta(days=7)
    settle_s: float = 3.0
    min_gap_s: float = 1.0


@dataclass(frozen=True)
class FitSchedule:
    """When the churn model is refitted: every `every_s` wall seconds on the wall clock; on the
    event-time clock once the watermark has stood still `settle_s` at an instant no model has
    been fitted (or tried) at yet."""

    every_s: float
    reload_s: float
    settle_s: float = 3.0


class Clock(Protocol):
    mode: ClockMode

    async def now(self, conn: AsyncConnection) -> datetime | None:
        """The current instant, read on a connection (None: no event applied yet)."""

    async def read(self, watermarks: Watermarks) -> datetime | None:
        """The current instant, read through a unit of work's watermarks."""

    async def judging(self, watermarks: Watermarks) -> Callable[[datetime], datetime]:
        """For a batch of events: the instant each event (by its own time) is judged at."""

    async def events_applied(self, watermarks: Watermarks, latest: Mapping[str, datetime]) -> None:
        """A batch applied events up to `latest` event time per input partition."""

    def partition_watcher(self, engine: AsyncEngine) -> UnreadPartitions | None:
        """What the consumer must report about its partitions for this clock, if anything."""

    async def seconds_to_next(
        self, next_deadline: Callable[[], Awaitable[datetime | None]]
    ) -> float | None:
        """Wall seconds until the clock reads the earliest stored deadline (`next_deadline`
        reads it); None where that cannot be known (then it is not read at all)."""

    def refresh_due(
        self,
        policy: RefreshPolicy,
        *,
        now: datetime | None,
        last_at: datetime | None,
        since_attempt_s: float | None,
        steady_s: float,
    ) -> bool:
        """Whether to rebuild the population now. `last_at`: the instant the current
        population is as of; `since_attempt_s`: wall seconds since the last attempt in this
        process; `steady_s`: wall seconds the clock's reading has not moved."""

    def fit_due(
        self,
        schedule: FitSchedule,
        *,
        now: datetime | None,
        steady_s: float,
        tried_at: datetime | None,
        wall_due: bool,
    ) -> bool:
        """Whether to refit the churn model now (`wall_due`: the wall schedule says so)."""

    def model_poll_s(self, schedule: FitSchedule) -> float:
        """How often the model loop looks again."""


class WallClock:
    mode: ClockMode = "wall"

    async def now(self, conn: AsyncConnection) -> datetime | None:
        return datetime.now(UTC)

    async def read(self, watermarks: Watermarks) -> datetime | None:
        return datetime.now(UTC)

    async def judging(self, watermarks: Watermarks) -> Callable[[datetime], datetime]:
        # An event is judged now; one stamped in the future (clock skew upstream) at its own
        # time, so no label ever takes effect before the fact that caused it.
        now = datetime.now(UTC)
        return lambda t: t if t > now else now

    async def events_applied(self, watermarks: Watermarks, latest: Mapping[str, datetime]) -> None:
        return None

    def partition_watcher(self, engine: AsyncEngine) -> UnreadPartitions | None:
        return None

    async def seconds_to_next(
        self, next_deadline: Callable[[], Awaitable[datetime | None]]
    ) -> float | None:
        deadline = await next_deadline()
        if deadline is None:
            return None
        return max((deadline - datetime.now(UTC)).total_seconds(), 0.0)

    def refresh_due(
        self,
        policy: RefreshPolicy,
        *,
        now: datetime | None,
        last_at: datetime | None,
        since_attempt_s: float | None,
        steady_s: float,
    ) -> bool:
        if now is None or not _may_attempt(policy, since_attempt_s):
            return False
        if last_at is None:
            # Nothing to build from yet: retry at the refresh cadence, not at every poll.
            return since_attempt_s is None or since_attempt_s >= policy.every.total_seconds()
        return now - last_at >= policy.every

    def fit_due(
        self,
        schedule: FitSchedule,
        *,
        now: datetime | None,
        steady_s: float,
        tried_at: datetime | None,
        wall_due: bool,
    ) -> bool:
        return now is not None and wall_due

    def model_poll_s(self, schedule: FitSchedule) -> float:
        return schedule.reload_s


class EventTimeClock:
    mode: ClockMode = "event_time"

    async def now(self, conn: AsyncConnection) -> datetime | None:
        return await repo.read_watermark(conn)

    async def read(self, watermarks: Watermarks) -> datetime | None:
        return await watermarks.read()

    async def judging(self, watermarks: Watermarks) -> Callable[[datetime], datetime]:
        # Each event at its own time (a customer's events share a partition, so they arrive in
        # order); the scheduler fires deadlines only up to the slowest partition's watermark.
        return _own_time

    async def events_applied(self, watermarks: Watermarks, latest: Mapping[str, datetime]) -> None:
        for partition, mark in sorted(latest.items()):
            await watermarks.advance(partition, mark)

    def partition_watcher(self, engine: AsyncEngine) -> UnreadPartitions | None:
        return UnreadPartitions(engine)

    async def seconds_to_next(
        self, next_deadline: Callable[[], Awaitable[datetime | None]]
    ) -> float | None:
        return None  # the watermark moves with the events, not with the wall clock

    def refresh_due(
        self,
        policy: RefreshPolicy,
        *,
        now: datetime | None,
        last_at: datetime | None,
        since_attempt_s: float | None,
        steady_s: float,
    ) -> bool:
        if now is None or not _may_attempt(policy, since_attempt_s):
            return False
        if last_at is None:
            return True
        if now <= last_at:
            return False
        return now - last_at >= policy.step or steady_s >= policy.settle_s

    def fit_due(
        self,
        schedule: FitSchedule,
        *,
        now: datetime | None,
        steady_s: float,
        tried_at: datetime | None,
        wall_due: bool,
    ) -> bool:
        # Not on wall time, which would make a replay's model — and so its churn labels —
        # depend on how fast it ran.
        return now is not None and now != tried_at and steady_s >= schedule.settle_s

    def model_poll_s(self, schedule: FitSchedule) -> float:
        return min(schedule.reload_s, schedule.settle_s)


def _may_attempt(policy: RefreshPolicy, since_attempt_s: float | None) -> bool:
    """Never two population rebuilds within `min_gap_s` wall seconds, on either clock."""
    return since_attempt_s is None or since_attempt_s >= policy.min_gap_s


def _own_time(t: datetime) -> datetime:
    return t


def make_clock(mode: ClockMode) -> Clock:
    return WallClock() if mode == "wall" else EventTimeClock()


@dataclass
class Stillness:
    """How long a reading of the clock has not changed, in seconds of `at` (a monotonic
    clock): a replay's watermark standing still means the log is drained or paused."""

    since: float
    value: datetime | None = None

    def observe(self, value: datetime | None, at: float) -> float:
        if value != self.value:
            self.value, self.since = value, at
        return at - self.since


@dataclass
class UnreadPartitions:
    """Keeps a replay's watermark honest about partitions not read yet.

    The watermark is the minimum over partitions of the latest event time applied. A partition
    that has not been read yet has no such time, and leaving it out would let the partitions
    read so far (perhaps already at the end of the log) claim the final watermark — the
    population would then be computed from part of the customers. So each assigned partition
    is registered without a watermark (which makes the watermark unknown) until its first event
    is applied, or until it is read to its end with nothing to apply (an empty partition must
    not hold the replay back forever).
    """

    engine: AsyncEngine
    _unread: set[str] = field(default_factory=set)

    async def assigned(self, conn: AsyncConnection, partitions: frozenset[TopicPartition]) -> None:
        self._unread = set(await repo.register_partitions(conn, sorted(map(_name, partitions))))

    async def caught_up(self, partitions: frozenset[TopicPartition]) -> None:
        names = {_name(tp) for tp in partitions} & self._unread
        if not names:
            return
        async with self.engine.begin() as conn:
            await repo.forget_unread_partitions(conn, sorted(names))
        self._unread -= names


def _name(tp: TopicPartition) -> str:
    return repo.partition_name(tp.topic, tp.partition)
