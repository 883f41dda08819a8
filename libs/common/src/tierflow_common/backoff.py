"""Doubling, capped delay between attempts of a loop that must keep going (a broker or database
that is down). Not tenacity: these loops release a lock between attempts and stop on shutdown or
rebalance, which a plain loop with this helper says more plainly than a decorator."""

from __future__ import annotations

import asyncio


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first = first
        self._cap = cap
        self.delay = first

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to the cap) for the next failure."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self._cap)

    def reset(self) -> None:
        self.delay = self._first
