"""One elected classifier process: the one that rebuilds the population statistics, sweeps the
customers they re-classify and fits the churn model. Every other process only loads the
versions it publishes.

The election is a session-level PostgreSQL advisory lock held on a connection of its own
(autocommit: no transaction stays open). Whoever holds it leads; the others try to take it
each time they look (about once a second), so when the leader stops, crashes or loses its
connection — the server then drops the lock with the session — another one leads within
about a second. A leader checks its connection each time it looks and stops leading as soon
as that fails. A leader that cannot know it lost the lock (between two looks) may overlap with
the next one for a moment: what both would do then is safe twice (a sweep locks each customer
and records each change once per cause; publications are serialized and never go back).
"""

from __future__ import annotations

import asyncio
import time
import zlib

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

# The two-int key space of advisory locks: no clash with the one-bigint keys of the
# per-customer locks (hashtextextended) or the outbox relays (crc32).
_NAMESPACE = zlib.crc32(b"tierflow-classifier") & 0x7FFFFFFF
_LEADER = 1


class Leadership:
    """Whether this process is the elected one right now (`lead()`); `resign()` on stop."""

    def __init__(self, engine: AsyncEngine, *, recheck_s: float = 0.5) -> None:
        self._engine = engine
        self._recheck_s = recheck_s
        self._conn: AsyncConnection | None = None
        self._checked_at = -1e18
        self._held_since: float | None = None
        self._lock = asyncio.Lock()

    @property
    def leading(self) -> bool:
        """What the last look found (no database round trip)."""
        return self._conn is not None

    @property
    def held_for_s(self) -> float:
        """Seconds since this process took the lead (0 when it does not lead)."""
        return 0.0 if self._held_since is None else time.monotonic() - self._held_since

    async def lead(self) -> bool:
        """Take the lead if nobody has it; True while this process has it. Several tasks may
        ask: looks within `recheck_s` of the last one answer without a round trip."""
        async with self._lock:
            now = time.monotonic()
            if now - self._checked_at < self._recheck_s:
                return self._conn is not None
            self._checked_at = now
            if self._conn is not None:
                try:
                    await self._conn.execute(text("SELECT 1"))
                    return True
                except Exception as exc:
                    log.warning("leadership_lost", error=str(exc))
                    await self._drop()
                    return False
            return await self._try_take()

    async def _try_take(self) -> bool:
        conn = await self._engine.connect()
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            taken = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:ns, :k)"), {"ns": _NAMESPACE, "k": _LEADER}
            )
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        if not taken:
            await conn.close()
            return False
        self._conn = conn
        self._held_since = time.monotonic()
        log.info("leadership_taken")
        return True

    async def _drop(self) -> None:
        conn, self._conn, self._held_since = self._conn, None, None
        if conn is None:
            return
        try:
            await conn.invalidate()  # never back into the pool with the lock
            await conn.close()
        except Exception as exc:
            log.debug("leadership_connection_close_failed", error=str(exc))

    async def resign(self) -> None:
        """Give the lead up now (on shutdown), so another process takes it at its next look."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:ns, :k)"), {"ns": _NAMESPACE, "k": _LEADER}
                )
                log.info("leadership_resigned")
            except Exception as exc:
                log.warning("leadership_resign_failed", error=str(exc))
            await self._drop()
            self._checked_at = -1e18
