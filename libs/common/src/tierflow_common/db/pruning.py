"""Retention for tables that are not partitioned by time: old rows deleted in small batches.

The dedup ledgers drop whole weekly partitions (db/ledger_partitions.py); change history,
finished care actions with their deliveries and contact-ledger entries are keyed by ids and
read by customer, so they are pruned row by row instead. Each rule is one statement that
deletes at most `batch` rows older than a cutoff, chosen with `FOR UPDATE SKIP LOCKED` (rows
another transaction holds are left for the next round, never waited for) and found through an
index on the age column; each batch is its own short transaction under a lock timeout, so a
pruning round never holds a lock for long, and processes that prune at once take different
rows. A round repeats a rule's statement until it deletes less than a full batch.

Rows pruned are counted per table in `tierflow_rows_pruned_total`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.db.raw import raw_connection
from tierflow_common.metrics import ROWS_PRUNED

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PruneRule:
    """One statement with $1 = the cutoff (rows older than it go), $2 = the batch size and
    `params` after them; it returns one row whose columns are the tables it deleted from, each
    with its count. `drives` is the column whose count says whether a full batch was taken."""

    name: str
    retention: timedelta
    statement: str
    drives: str
    params: Sequence[Any] = ()


def ctid_batch(
    table: str, age_column: str, *, each: str = "1", counted_as: str | None = None
) -> str:
    """The statement of a rule that deletes a table's rows older than the cutoff. It counts
    `each` per row deleted (an expression over the row: a row that holds several entries
    counts them), as `counted_as` (default: the table)."""
    return (
        f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY("  # noqa: S608 - our own names
        f"SELECT ctid FROM {table} WHERE {age_column} < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)) "
        f"RETURNING {each} AS n) SELECT coalesce(sum(n), 0) AS {counted_as or table} FROM gone"
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Pruner:
    """The pruning job of one service: every rule, at start-up and every `interval_s`."""

    engine: AsyncEngine
    rules: Sequence[PruneRule]
    batch: int = 1_000
    interval_s: float = 3_600.0
    lock_timeout_s: float = 5.0
    clock: Callable[[], datetime] = utc_now
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def prune(self) -> dict[str, int]:
        """One round: every rule until its rows past the retention are gone; rows per table."""
        total: dict[str, int] = {}
        now = self.clock()
        for rule in self.rules:
            cutoff = now - rule.retention
            while not self._stopping.is_set():
                counts = await self._batch(rule, cutoff)
                for table, n in counts.items():
                    if n:
                        total[table] = total.get(table, 0) + n
                        ROWS_PRUNED.labels(table=table).inc(n)
                if counts.get(rule.drives, 0) < self.batch:
                    break
                await asyncio.sleep(0)  # let the stream's work in between batches
        if total:
            log.info("rows_pruned", **total)
        return total

    async def _batch(self, rule: PruneRule, cutoff: datetime) -> Mapping[str, int]:
        async with self.engine.begin() as conn:
            raw = await raw_connection(conn)
            await raw.execute(f"SET LOCAL lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
            row = await raw.fetchrow(rule.statement, cutoff, self.batch, *rule.params)
        return {k: int(v) for k, v in dict(row).items()}

    async def run(self) -> None:
        """Prune at start-up and every `interval_s` until stop(); a failed round (database away,
        a lock not granted in time) is logged and retried within a minute."""
        while not self._stopping.is_set():
            delay = self.interval_s
            try:
                await self.prune()
            except Exception as exc:
                log.warning("pruning_failed", error=str(exc))
                delay = min(delay, 60.0)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def stop(self) -> None:
        self._stopping.set()
