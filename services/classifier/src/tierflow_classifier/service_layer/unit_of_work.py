"""The classifier's unit of work: customers, change history, ledger, watermarks, sweep
progress, rule-set versions and the outbox behind one `async with uow:` — one PostgreSQL
transaction.

Use cases see only these protocols, never a connection. `SqlUnitOfWork(engine)` opens and
commits its own transaction (scheduler, sweep); `SqlUnitOfWork.joining(conn)` takes part in a
transaction someone else owns — the stateful consumer's, which stores the consumed offsets in
it — and leaves the commit to that owner, which also writes the outbox rows handed to it.
tests/fakes.py has the in-memory twin the service-layer unit tests run against.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from tierflow_classifier.adapters import erasure as erasure_store
from tierflow_classifier.adapters import population_store as pop_store
from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.clock import Watermarks
from tierflow_classifier.adapters.erasure import ErasedRows
from tierflow_classifier.adapters.population_store import SweepProgress
from tierflow_classifier.adapters.rule_store import SqlRuleSets
from tierflow_classifier.domain.change_ids import ChangeRecord
from tierflow_classifier.domain.model import Change, CustomerState
from tierflow_classifier.domain.rule_versions import Activation, StoredRuleSet
from tierflow_common import erasure as tombstones
from tierflow_common.contract.kafka_binding import EmittedEvent, KafkaRecord
from tierflow_common.outbox import enqueue

OutboxItem = tuple[str, EmittedEvent | KafkaRecord]
# (source, event id, customer id, event time): an event's entry in the ledger.
LedgerEntry = tuple[str, str, str, datetime]


class Customers(Protocol):
    async def lock(self, ids: Sequence[str]) -> None:
        """Serialise writers per customer (waits for other transactions' batches)."""

    async def try_lock(self, ids: Sequence[str]) -> list[str]:
        """Lock without waiting; the customers locked."""

    async def load(self, ids: Sequence[str]) -> dict[str, CustomerState]: ...

    async def save(self, states: Sequence[CustomerState]) -> None: ...

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Customers whose review deadline is at or before `now`, earliest first."""

    async def next_deadline(self) -> datetime | None: ...

    async def versions_after(self, after: str, limit: int) -> list[tuple[str, str]]:
        """The next customers in id order after `after`, with the version each was judged by."""

    async def bought_after(self, after: str, limit: int) -> list[str]:
        """The next customers in id order after `after` who bought at least once."""

    async def outlines(self, ids: Sequence[str], dimensions: Sequence[str]) -> list[CustomerState]:
        """These customers in outline: what the population dimensions read."""

    async def lower_reviews(self, deadlines: Sequence[tuple[str, datetime]]) -> None:
        """Bring review deadlines forward (never back)."""


class ChangeHistory(Protocol):
    async def record(self, changes: Sequence[tuple[str, Change]]) -> list[ChangeRecord]:
        """Store (change id, change) pairs; the records of those that were new (the others
        are repeats), grouped as `customer-classification-changed` carries them."""


class Ledger(Protocol):
    async def claim(self, entries: Sequence[LedgerEntry]) -> set[tuple[str, str]]:
        """Enter events in the ledger; the (source, id) of those not applied before."""

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        """Forget events that were dead-lettered, so a fixed resend applies."""


class Erasures(Protocol):
    async def erase(self, customer_id: str) -> ErasedRows:
        """Delete every row of the customer (state, labels, history, ledger, receipts)."""

    async def record(self, customer_id: str, through: datetime) -> datetime:
        """Remember the erasure through `through`; the boundary in force (never moved back)."""

    async def boundaries(self, customer_ids: Sequence[str]) -> dict[str, datetime]:
        """The erased ones among these customers, with their boundaries (take the locks first)."""


class Sweeps(Protocol):
    async def save_progress(self, progress: SweepProgress) -> bool:
        """False when that population version is no longer the current one."""


class RuleSets(Protocol):
    async def current(self) -> Activation | None:
        """The activation in force (the latest)."""

    async def activations(self, limit: int) -> list[Activation]:
        """The latest activations, newest first."""

    async def get(self, version: str) -> StoredRuleSet | None: ...

    async def versions(self, limit: int) -> list[StoredRuleSet]:
        """The newest versions first."""

    async def add(self, stored: StoredRuleSet) -> bool:
        """Keep a version; False when it is kept already."""

    async def activate(self, activation: Activation) -> bool:
        """Record an activation; False when another took its number first."""


class Outbox:
    """Records to publish once the unit of work commits."""

    def __init__(self) -> None:
        self.pending: list[OutboxItem] = []

    def add(self, items: Sequence[OutboxItem]) -> None:
        self.pending.extend(items)

    def take(self) -> list[OutboxItem]:
        items, self.pending = self.pending, []
        return items


class UnitOfWork(Protocol):
    customers: Customers
    history: ChangeHistory
    ledger: Ledger
    watermarks: Watermarks
    sweeps: Sweeps
    erasures: Erasures
    rule_sets: RuleSets
    outbox: Outbox

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SqlCustomers:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        # The states of the latest load (and what was saved of them since): a save sends only
        # what changed of them. Only the latest: a long transaction that loads page after page
        # (a simulation, a sweep) must not hold every customer it read.
        self._loaded: dict[str, CustomerState] = {}

    async def lock(self, ids: Sequence[str]) -> None:
        await repo.lock_customers(self._conn, ids)

    async def try_lock(self, ids: Sequence[str]) -> list[str]:
        return await pop_store.try_lock_customers(self._conn, ids)

    async def load(self, ids: Sequence[str]) -> dict[str, CustomerState]:
        states = await repo.load_states(self._conn, ids)
        self._loaded = dict(states)
        return states

    async def save(self, states: Sequence[CustomerState]) -> None:
        await repo.save_states(self._conn, states, self._loaded)
        self._loaded.update((s.customer_id, s) for s in states)

    async def due(self, now: datetime, limit: int) -> list[str]:
        return await repo.due_customers(self._conn, now, limit)

    async def next_deadline(self) -> datetime | None:
        return await repo.next_deadline(self._conn)

    async def versions_after(self, after: str, limit: int) -> list[tuple[str, str]]:
        return await repo.versions_after(self._conn, after, limit)

    async def bought_after(self, after: str, limit: int) -> list[str]:
        return await pop_store.customers_after(self._conn, after, limit)

    async def outlines(self, ids: Sequence[str], dimensions: Sequence[str]) -> list[CustomerState]:
        return await pop_store.outlines(self._conn, ids, dimensions)

    async def lower_reviews(self, deadlines: Sequence[tuple[str, datetime]]) -> None:
        await pop_store.lower_reviews(self._conn, list(deadlines))


class _SqlHistory:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def record(self, changes: Sequence[tuple[str, Change]]) -> list[ChangeRecord]:
        return await repo.record_changes(self._conn, changes)


class _SqlLedger:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def claim(self, entries: Sequence[LedgerEntry]) -> set[tuple[str, str]]:
        return await repo.claim_events(self._conn, entries)

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        await repo.release_events(self._conn, keys)


class SqlWatermarks:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def read(self) -> datetime | None:
        return await repo.read_watermark(self._conn)

    async def advance(self, partition: str, to: datetime) -> None:
        await repo.advance_watermark(self._conn, partition, to)


class _SqlSweeps:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def save_progress(self, progress: SweepProgress) -> bool:
        return await pop_store.save_progress(self._conn, progress)


class _SqlErasures:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def erase(self, customer_id: str) -> ErasedRows:
        return await erasure_store.erase_rows(self._conn, customer_id)

    async def record(self, customer_id: str, through: datetime) -> datetime:
        return await tombstones.record_erasure(self._conn, PRODUCER_NAME, customer_id, through)

    async def boundaries(self, customer_ids: Sequence[str]) -> dict[str, datetime]:
        return await tombstones.erased_through(self._conn, PRODUCER_NAME, customer_ids)


class SqlUnitOfWork:
    """One PostgreSQL transaction. Commits on a clean exit, rolls back on an exception."""

    def __init__(self, engine: AsyncEngine | None, *, conn: AsyncConnection | None = None) -> None:
        self._engine = engine
        self._joined = conn
        self._conn: AsyncConnection | None = None
        self._tx: AsyncTransaction | None = None
        self.outbox = Outbox()

    @classmethod
    def joining(cls, conn: AsyncConnection) -> SqlUnitOfWork:
        """Work inside `conn`'s open transaction; its owner commits (and writes the outbox
        items left in `outbox`)."""
        return cls(None, conn=conn)

    def _bind(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self.customers: Customers = SqlCustomers(conn)
        self.history: ChangeHistory = _SqlHistory(conn)
        self.ledger: Ledger = _SqlLedger(conn)
        self.watermarks: Watermarks = SqlWatermarks(conn)
        self.sweeps: Sweeps = _SqlSweeps(conn)
        self.erasures: Erasures = _SqlErasures(conn)
        self.rule_sets: RuleSets = SqlRuleSets(conn)

    async def __aenter__(self) -> Self:
        self.outbox = Outbox()
        if self._joined is not None:
            self._bind(self._joined)
            return self
        assert self._engine is not None
        conn = await self._engine.connect()
        try:
            self._tx = await conn.begin()
        except BaseException:
            await conn.close()
            raise
        self._bind(conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._joined is not None:
            return
        conn, tx = self._conn, self._tx
        assert conn is not None
        assert tx is not None
        self._conn = self._tx = None
        try:
            if exc_type is None:
                await enqueue(conn, PRODUCER_NAME, self.outbox.take())
                await tx.commit()
            else:
                await tx.rollback()
        finally:
            await conn.close()


# The outbox producer (and relay) name of every record the classifier publishes.
PRODUCER_NAME = "classifier"
