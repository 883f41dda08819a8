"""A unit of work over one consistent snapshot that writes nothing: what a simulation runs the
reclassify use case against.

One REPEATABLE READ, READ ONLY transaction: every page of customers is read as of the same
instant, and (MVCC) no lock is taken that a consumer or the scheduler would wait for. What the
use case saves, records or enqueues is kept in memory for the caller to read, then dropped;
nothing reaches the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import NoReturn, Self

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from tierflow_classifier.adapters.clock import Watermarks
from tierflow_classifier.adapters.population_store import SweepProgress
from tierflow_classifier.adapters.rule_store import SqlRuleSets
from tierflow_classifier.domain.change_ids import ChangeRecord, change_records_of, new_changes
from tierflow_classifier.domain.model import Change, CustomerState
from tierflow_classifier.service_layer.unit_of_work import (
    ChangeHistory,
    Customers,
    Erasures,
    Ledger,
    LedgerEntry,
    Outbox,
    RuleSets,
    SqlCustomers,
    SqlWatermarks,
    Sweeps,
)


class SnapshotCustomers(SqlCustomers):
    """Reads from the snapshot as the unit of work's customers do; writes nothing (what the
    use case saves is dropped: it reports the states it judged itself, with
    reclassify(observe=True)), and takes no lock (nothing to serialise)."""

    async def lock(self, ids: Sequence[str]) -> None:
        return None

    async def try_lock(self, ids: Sequence[str]) -> list[str]:
        return list(ids)

    async def save(self, states: Sequence[CustomerState]) -> None:
        return None

    async def lower_reviews(self, deadlines: Sequence[tuple[str, datetime]]) -> None:
        return None


class SnapshotHistory:
    """Every change counts as new (the history of a simulation is its own)."""

    async def record(self, changes: Sequence[tuple[str, Change]]) -> list[ChangeRecord]:
        return change_records_of(new_changes(changes))


class _NoLedger:
    async def claim(self, entries: Sequence[LedgerEntry]) -> set[tuple[str, str]]:
        return {(source, event_id) for source, event_id, _, _ in entries}

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        return None


class _NoErasures:
    """A simulation erases nothing (and an erased customer is not in the snapshot)."""

    async def erase(self, customer_id: str) -> NoReturn:
        raise RuntimeError("a snapshot unit of work writes nothing")

    async def record(self, customer_id: str, through: datetime) -> NoReturn:
        raise RuntimeError("a snapshot unit of work writes nothing")

    async def boundaries(self, customer_ids: Sequence[str]) -> dict[str, datetime]:
        return {}


class _NoSweeps:
    async def save_progress(self, progress: SweepProgress) -> bool:
        return False


class SnapshotUnitOfWork:
    """`snapshot`: the id another transaction exported (pg_export_snapshot): read what it
    sees, so that several processes read one instant."""

    def __init__(self, engine: AsyncEngine, *, snapshot: str | None = None) -> None:
        self._engine = engine
        self._snapshot = snapshot
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None
        self.outbox = Outbox()

    @property
    def connection(self) -> AsyncConnection:
        """The snapshot's connection, for other read-only adapters (the care preview)."""
        assert self._conn is not None
        return self._conn

    async def __aenter__(self) -> Self:
        conn = await self._engine.connect()
        try:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            self._tx = await conn.begin()
            if self._snapshot is not None:
                await conn.execute(text("SET TRANSACTION SNAPSHOT " + _quoted(self._snapshot)))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.customers: Customers = SnapshotCustomers(conn)
        self.history: ChangeHistory = SnapshotHistory()
        self.ledger: Ledger = _NoLedger()
        self.watermarks: Watermarks = SqlWatermarks(conn)
        self.sweeps: Sweeps = _NoSweeps()
        self.erasures: Erasures = _NoErasures()
        self.rule_sets: RuleSets = SqlRuleSets(conn)
        self.outbox = Outbox()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, tx = self._conn, self._tx
        self._conn = self._tx = None
        try:
            if tx is not None:
                await tx.rollback()  # read only: nothing to keep
        finally:
            if conn is not None:
                await conn.close()


def _quoted(snapshot_id: str) -> str:
    """A snapshot id as a literal (SET TRANSACTION SNAPSHOT takes no parameter); ids are
    hex digits and dashes, anything else is refused."""
    if not snapshot_id or any(c not in "0123456789ABCDEFabcdef-" for c in snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return f"'{snapshot_id}'"
