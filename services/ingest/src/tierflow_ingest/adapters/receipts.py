"""Receipts of acknowledged events, written in group commits shared by concurrent requests.

A receipt exists only for an event the broker acknowledged, so "duplicate" means "this
(source, id) was already durably accepted before". The duplicate is still forwarded; the
classifier's ledger is what guarantees it is applied once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

Key = tuple[str, str]

_INSERT = text(
    "INSERT INTO ingest_receipts (source, event_id) "
    "SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:ids AS text[])) "
    "ON CONFLICT DO NOTHING RETURNING source, event_id"
)


class ReceiptWriter:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 5_000) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[list[Key], asyncio.Future[list[bool]]]] = asyncio.Queue()

    async def record(self, keys: Sequence[Key]) -> list[bool]:
        """For each key, True if it was new (first acceptance), False if seen before."""
        if not keys:
            return []
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
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
                new = await self._insert([k for keys, _ in pending for k in keys])
            except Exception as exc:
                for _, fut in pending:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for keys, fut in pending:
                flags = []
                for key in keys:
                    flags.append(key in new)
                    new.discard(key)  # a second copy in the same group commit is a duplicate
                if not fut.done():
                    fut.set_result(flags)

    async def _insert(self, keys: list[Key]) -> set[Key]:
        unique = list(dict.fromkeys(keys))
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                _INSERT, {"sources": [s for s, _ in unique], "ids": [i for _, i in unique]}
            )
            return {(r.source, r.event_id) for r in rows}
