"""The classifier's notion of "now": the wall clock in production, or in replay mode the
event-time watermark (the slowest partition's latest event time), so replaying history
reproduces the time-driven transitions that would have happened."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

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
