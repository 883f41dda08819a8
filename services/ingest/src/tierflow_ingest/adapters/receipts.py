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
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.db.ledger_partitions import (
    LedgerPartitionMissing,
    LedgerPartitions,
    is_missing_partition,
)

# (source, id, time): time is the event's own, the same on every resend.
Key = tuple[str, str, datetime]
TABLE = "ingest_receipts"

_INSERT = text(
    "INSERT INTO ingest_receipts (source, event_id, event_time) "
    "SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:ids AS text[]), "
    "CAST(:times AS timestamptz[])) "
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
        try:
            async with self._engine.begin() as conn:
                rows = await conn.execute(
                    _INSERT,
                    {
                        "sources": [k[0] for k in unique],
                        "ids": [k[1] for k in unique],
                        "times": [k[2] for k in unique],
                    },
                )
                return {(r.source, r.event_id, r.event_time) for r in rows}, horizon
        except DBAPIError as exc:
            if not is_missing_partition(exc):
                raise
            self.partitions.forget()  # dropped behind this process's back: the next group looks
            raise LedgerPartitionMissing(str(exc.orig)) from exc
