"""The classifier's notion of "now": the wall clock in production, or in replay mode the
event-time watermark (the slowest partition's latest event time), so replaying history
reproduces the time-driven transitions that would have happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from aiokafka import TopicPartition
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_classifier.adapters import repository as repo

ClockMode = Literal["wall", "event_time"]


class Clock(Protocol):
    mode: ClockMode

    async def now(self, conn: AsyncConnection) -> datetime | None: ...


class WallClock:
    mode: ClockMode = "wall"

    async def now(self, conn: AsyncConnection) -> datetime | None:
        return datetime.now(UTC)


class EventTimeClock:
    mode: ClockMode = "event_time"

    async def now(self, conn: AsyncConnection) -> datetime | None:
        return await repo.read_watermark(conn)


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
