"""Every CLASSIFIER_DISTRIBUTION_SNAPSHOT_S the elected classifier process (adapters/
leadership.py) stores how many customers hold each label of each dimension, so the console can
draw the distribution over time. The spacing is read from the latest stored snapshot, not kept
in the process: a restart or a new leader takes the next one when it is due, not at once
again (the first one, on an empty table, soon after start)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters import distribution_store
from tierflow_classifier.adapters.leadership import Leadership
from tierflow_classifier.domain.rules import RuleSet
from tierflow_common.transient import is_transient

log = structlog.get_logger(__name__)


class DistributionSnapshots:
    def __init__(
        self,
        engine: AsyncEngine,
        current: Callable[[], RuleSet],
        leadership: Leadership | None,
        *,
        every_s: float,
        keep: timedelta,
        look_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._current = current
        self._leadership = leadership
        self._every = timedelta(seconds=every_s)
        self._keep = keep
        self._look_s = min(look_s, every_s)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def tick(self, now: datetime | None = None) -> bool:
        """Take a snapshot if this process leads and one is due; True if it took one."""
        if self._leadership is not None and not await self._leadership.lead():
            return False
        now = now or datetime.now(UTC)
        async with self._engine.begin() as conn:
            last = await distribution_store.latest_at(conn)
            if last is not None and now - last < self._every:
                return False
            defaults = {d.name: d.default for d in self._current().dimensions}
            await distribution_store.take(conn, now, defaults, self._keep)
        return True

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception as exc:
                if is_transient(exc):
                    log.warning("distribution_snapshot_retry", error=str(exc))
                else:
                    log.exception("distribution_snapshot_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._look_s)
