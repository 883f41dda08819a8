"""Receipts of acknowledged events, written in group commits shared by concurrent requests.

A receipt exists only for an event the broker acknowledged, so "duplicate" means "this
(source, id) was already durably accepted before". The duplicate is still forwarded; the
classifier's ledger is what guarantees it is applied once.

Receipts are partitioned by the event's own time and kept for `INGEST_RECEIPT_RETENTION_DAYS`
(tierflow_common.db.ledger_partitions): an event older than that gets no receipt, and whether
it was sent before cannot be said (None).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_common.db.ledger_partitions import (
    LedgerPartitionMissing,
    LedgerPartitions,
    is_missing_partition,
)

# (source, id, time): time is the event's own, the same on every resend.
Key = tuple[str, str, datetime]
TABLE = "ingest_receipts"

# One statement per group, autocommit, on the writer's own connection: no pool checkout (and
# its pre-ping), no BEGIN/COMMIT, a prepared statement (asyncpg's cache): 1 round trip, not 6.
_INSERT = (
    "INSERT INTO ingest_receipts (source, event_id, event_time) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) "
    "ON CONFLICT DO NOTHING RETURNING source, event_id, event_time"
)


class ReceiptWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = 5_000,
        partitions: LedgerPartitions | None = None,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._conn: AsyncConnection | None = None
        self._raw: Any = None  # the asyncpg connection under self._conn
        self.partitions = partitions or LedgerPartitions(engine, TABLE)
        self._queue: asyncio.Queue[tuple[list[Key], asyncio.Future[list[bool | None]]]] = (
            asyncio.Queue()
        )

    async def record(self, keys: Sequence[Key]) -> list[bool | None]:
        """For each key, True if it was new (first acceptance), False if seen before, None if
        the event is older than the receipt window (no receipt is kept: cannot say)."""
        if not keys:
            return []
        future: asyncio.Future[list[bool | None]] = asyncio.get_running_loop().create_future()
        await self._queue.put((list(keys), future))
        return await future

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self._discard()

    async def _run(self) -> None:
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0][0])
            while size < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                pending.append(item)
                size += len(item[0])
            try:
                new, horizon = await self._insert([k for keys, _ in pending for k in keys])
            except Exception as exc:
                for _, fut in pending:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for keys, fut in pending:
                flags: list[bool | None] = []
                for key in keys:
                    if key[2] < horizon:
                        flags.append(None)
                        continue
                    flags.append(key in new)
                    new.discard(key)  # a second copy in the same group commit is a duplicate
                if not fut.done():
                    fut.set_result(flags)

    async def _insert(self, keys: list[Key]) -> tuple[set[Key], datetime]:
        """Insert the receipts of keys within the window: (those that were new, the horizon)."""
        horizon = await self.partitions.prepare([k[2] for k in keys])
        unique = [k for k in dict.fromkeys(keys) if k[2] >= horizon]
        if not unique:
            return set(), horizon
        raw = await self._connection()
        try:
            rows = await raw.fetch(
                _INSERT, [k[0] for k in unique], [k[1] for k in unique], [k[2] for k in unique]
            )
        except Exception as exc:
            if is_missing_partition(exc):
                self.partitions.forget()  # dropped behind this process's back: the next looks
                raise LedgerPartitionMissing(str(exc)) from exc
            await self._discard()  # broken: the next group reconnects
            raise
        except BaseException:
            await self._discard()  # interrupted mid-statement: the next group reconnects
            raise
        return {(r[0], r[1], r[2]) for r in rows}, horizon

    async def _connection(self) -> Any:
        if self._raw is None or self._raw.is_closed():
            await self._discard()
            self._conn = await self._engine.connect()
            self._raw = (await self._conn.get_raw_connection()).driver_connection
        return self._raw

    async def _discard(self) -> None:
        conn, self._conn, self._raw = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already gone
                await conn.invalidate()
                await conn.close()
