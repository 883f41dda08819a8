"""Samples consumer lag and topic end offsets for the overview's charts, every few seconds, and
keeps the last hour in memory (the console is one process; a restart starts the charts again,
the numbers themselves live in the broker and the database)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import structlog

from tierflow_console.domain.samples import Sample, SampleWindow

log = structlog.get_logger(__name__)

LagReader = Callable[[], Awaitable[Mapping[tuple[str, str, int], int]]]
EndsReader = Callable[[], Awaitable[Mapping[str, int]]]


class Sampler:
    def __init__(
        self,
        window: SampleWindow,
        *,
        lag: LagReader,
        ends: EndsReader,
        clock: Callable[[], datetime],
        interval_s: float,
    ) -> None:
        self.window, self._lag, self._ends = window, lag, ends
        self._clock, self._interval_s = clock, interval_s
        self.last_error: str | None = None

    async def sample_once(self) -> Sample:
        lag, ends = await asyncio.gather(self._lag(), self._ends())
        sample = Sample(self._clock(), dict(lag), dict(ends))
        self.window.add(sample)
        self.last_error = None
        return sample

    async def run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception as exc:  # the broker or database away: the next sample retries
                self.last_error = str(exc) or type(exc).__name__
                log.warning("console_sample_failed", error=self.last_error)
            await asyncio.sleep(self._interval_s)
