"""In-memory twin of the classifier's unit of work (service_layer/unit_of_work.py), for
service-layer tests through the bootstrap without PostgreSQL. One `FakeDatabase` holds what
was committed; each `async with FakeUnitOfWork(db)` works on a copy and commits it on a clean
exit (outbox items included), or throws it away on an exception, like a transaction."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Self

from tierflow_classifier.adapters.clock import Watermarks
from tierflow_classifier.adapters.erasure import ErasedRows
from tierflow_classifier.adapters.population_store import SweepProgress
from tierflow_classifier.domain.change_ids import ChangeRecord, change_records_of, new_changes
from tierflow_classifier.domain.model import Change, CustomerState
from tierflow_classifier.domain.rule_versions import Activation, StoredRuleSet
from tierflow_classifier.service_layer.unit_of_work import (
    ChangeHistory,
    Customers,
    Erasures,
    Ledger,
    LedgerEntry,
    Outbox,
    OutboxItem,
    RuleSets,
    Sweeps,
)


@dataclass
class FakeDatabase:
    customers: dict[str, CustomerState] = field(default_factory=dict)
    history: dict[str, Change] = field(default_factory=dict)
    labels: dict[tuple[str, str], str] = field(default_factory=dict)
    ledger: dict[tuple[str, str], LedgerEntry] = field(default_factory=dict)
    watermarks: dict[str, datetime | None] = field(default_factory=dict)
    sweep: SweepProgress | None = None
    rule_sets: dict[str, StoredRuleSet] = field(default_factory=dict)
    activations: list[Activation] = field(default_factory=list)
    outbox: list[OutboxItem] = field(default_factory=list)
    commits: int = 0
    locked: list[list[str]] = field(default_factory=list)
    erased: dict[str, datetime] = field(default_factory=dict)


class _Customers:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def lock(self, ids: Sequence[str]) -> None:
        self._db.locked.append(sorted(ids))

    async def try_lock(self, ids: Sequence[str]) -> list[str]:
        self._db.locked.append(sorted(ids))
        return list(ids)

    async def load(self, ids: Sequence[str]) -> dict[str, CustomerState]:
        return {i: self._db.customers[i] for i in ids if i in self._db.customers}

    async def save(self, states: Sequence[CustomerState]) -> None:
        for s in states:
            self._db.customers[s.customer_id] = s

    async def due(self, now: datetime, limit: int) -> list[str]:
        due = [
            (s.next_review_at, s.customer_id)
            for s in self._db.customers.values()
            if s.next_review_at is not None and s.next_review_at <= now
        ]
        return [cid for _, cid in sorted(due)[:limit]]

    async def next_deadline(self) -> datetime | None:
        return min(
            (s.next_review_at for s in self._db.customers.values() if s.next_review_at),
            default=None,
        )

    async def versions_after(self, after: str, limit: int) -> list[tuple[str, str]]:
        ids = sorted(i for i in self._db.customers if i > after)[:limit]
        return [(i, self._db.customers[i].rule_set_version) for i in ids]

    async def bought_after(self, after: str, limit: int) -> list[str]:
        bought = (i for i, s in self._db.customers.items() if s.purchases_lifetime > 0)
        return sorted(i for i in bought if i > after)[:limit]

    async def outlines(self, ids: Sequence[str], dimensions: Sequence[str]) -> list[CustomerState]:
        # The whole state is a faithful (if generous) outline.
        return [self._db.customers[i] for i in sorted(ids) if i in self._db.customers]

    async def lower_reviews(self, deadlines: Sequence[tuple[str, datetime]]) -> None:
        for cid, t in deadlines:
            s = self._db.customers[cid]
            if s.next_review_at is None or t < s.next_review_at:
                self._db.customers[cid] = replace(s, next_review_at=t)


class _History:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def record(self, changes: Sequence[tuple[str, Change]]) -> list[ChangeRecord]:
        for _, c in changes:
            self._db.labels[(c.customer_id, c.dimension)] = c.to.label
        new = new_changes(changes, self._db.history)
        self._db.history.update(new)
        return change_records_of(new)


class _Ledger:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def claim(self, entries: Sequence[LedgerEntry]) -> set[tuple[str, str]]:
        new: set[tuple[str, str]] = set()
        for entry in entries:
            key = (entry[0], entry[1])
            if key not in self._db.ledger:
                self._db.ledger[key] = entry
                new.add(key)
        return new

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        for key in keys:
            self._db.ledger.pop(key, None)


class _Watermarks:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def read(self) -> datetime | None:
        marks = list(self._db.watermarks.values())
        if not marks or any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)

    async def advance(self, partition: str, to: datetime) -> None:
        current = self._db.watermarks.get(partition)
        self._db.watermarks[partition] = to if current is None else max(current, to)


class _Sweeps:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def save_progress(self, progress: SweepProgress) -> bool:
        self._db.sweep = progress
        return True


class _RuleSets:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def current(self) -> Activation | None:
        return self._db.activations[-1] if self._db.activations else None

    async def activations(self, limit: int) -> list[Activation]:
        return list(reversed(self._db.activations))[:limit]

    async def get(self, version: str) -> StoredRuleSet | None:
        return self._db.rule_sets.get(version)

    async def versions(self, limit: int) -> list[StoredRuleSet]:
        ordered = sorted(self._db.rule_sets.values(), key=lambda r: r.created_at, reverse=True)
        return ordered[:limit]

    async def add(self, stored: StoredRuleSet) -> bool:
        if stored.version in self._db.rule_sets:
            return False
        self._db.rule_sets[stored.version] = stored
        return True

    async def activate(self, activation: Activation) -> bool:
        if activation.activation != len(self._db.activations) + 1:
            return False
        self._db.activations.append(activation)
        in_force = {activation.version, activation.previous} - {None}
        for version, stored in self._db.rule_sets.items():
            status = (
                "active"
                if version in in_force
                else "retired"
                if stored.status == "active"
                else stored.status
            )
            self._db.rule_sets[version] = replace(stored, status=status)
        return True


class _Erasures:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def erase(self, customer_id: str) -> ErasedRows:
        db = self._db
        state = db.customers.pop(customer_id, None)
        changes = [i for i, c in db.history.items() if c.customer_id == customer_id]
        for i in changes:
            del db.history[i]
        labels = [k for k in db.labels if k[0] == customer_id]
        for key in labels:
            del db.labels[key]
        entries = [k for k, e in db.ledger.items() if e[2] == customer_id]
        latest = max((db.ledger[k][3] for k in entries), default=None)
        for entry in entries:
            del db.ledger[entry]
        return ErasedRows(
            int(state is not None), len(labels), len(changes), len(entries), 0, latest
        )

    async def record(self, customer_id: str, through: datetime) -> datetime:
        current = self._db.erased.get(customer_id)
        self._db.erased[customer_id] = through if current is None else max(current, through)
        return self._db.erased[customer_id]

    async def boundaries(self, customer_ids: Sequence[str]) -> dict[str, datetime]:
        return {c: self._db.erased[c] for c in customer_ids if c in self._db.erased}


class FakeUnitOfWork:
    def __init__(self, db: FakeDatabase, *, joined: bool = False) -> None:
        self.db = db
        self._joined = joined
        self.outbox = Outbox()

    async def __aenter__(self) -> Self:
        self._work = copy.deepcopy(self.db) if not self._joined else self.db
        self.outbox = Outbox()
        self.customers: Customers = _Customers(self._work)
        self.history: ChangeHistory = _History(self._work)
        self.ledger: Ledger = _Ledger(self._work)
        self.watermarks: Watermarks = _Watermarks(self._work)
        self.sweeps: Sweeps = _Sweeps(self._work)
        self.erasures: Erasures = _Erasures(self._work)
        self.rule_sets: RuleSets = _RuleSets(self._work)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._joined or exc_type is not None:
            return
        self._work.outbox.extend(self.outbox.take())
        self._work.commits += 1
        self.db.__dict__.update(self._work.__dict__)
