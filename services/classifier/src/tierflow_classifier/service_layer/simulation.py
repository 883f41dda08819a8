"""What-if: what activating a candidate rule set would change, computed by the same reclassify
use case and the same step (TimePassed) that activation runs, against a unit of work that reads
one consistent snapshot a page at a time and writes nothing (adapters/snapshot.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tierflow_classifier.domain.change_ids import change_id
from tierflow_classifier.domain.model import Change, CustomerState
from tierflow_classifier.domain.reclassification import Judging, TimePassed
from tierflow_classifier.service_layer.reclassify import reclassify
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.settings import TopicSettings

NONE = "(none)"  # the "from" of a dimension a customer had no label in yet
SAMPLES = 5


class CareCounter(Protocol):
    async def count(
        self, changes: list[tuple[str, Change]], now: datetime
    ) -> tuple[Counter[str], Counter[str]]:
        """(actions created by playbook rule id, actions suppressed by reason)."""


@dataclass
class DimensionMoves:
    changed: int = 0
    matrix: dict[str, Counter[str]] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, customer_id: str, before: str, after: str) -> None:
        self.matrix.setdefault(before, Counter())[after] += 1
        if before != after:
            self.changed += 1
            shown = self.samples.setdefault(f"{before}->{after}", [])
            if len(shown) < SAMPLES:
                shown.append(customer_id)


@dataclass
class Simulation:
    base_version: str | None
    candidate_version: str
    as_of: datetime
    customers: int = 0
    dimensions: dict[str, DimensionMoves] = field(default_factory=dict)
    care_actions: Counter[str] = field(default_factory=Counter)
    care_actions_suppressed: Counter[str] = field(default_factory=Counter)
    changes: int = 0
    elapsed_ms: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "base_version": self.base_version,
            "candidate_version": self.candidate_version,
            "as_of": self.as_of.isoformat(),
            "customers": self.customers,
            "dimensions": {
                name: {
                    "changed": moves.changed,
                    "matrix": {f: dict(to) for f, to in sorted(moves.matrix.items())},
                    "samples": moves.samples,
                }
                for name, moves in sorted(self.dimensions.items())
            },
            "care_actions": dict(sorted(self.care_actions.items())),
            "care_actions_suppressed": dict(sorted(self.care_actions_suppressed.items())),
            "changes": self.changes,
            "elapsed_ms": self.elapsed_ms,
        }


def _labels(state: CustomerState | None) -> dict[str, str]:
    return {} if state is None else {d: a.label for d, a in state.dimensions.items()}


async def simulate(
    uow: UnitOfWork,
    judging: Judging,
    *,
    base_version: str | None,
    candidate_version: str,
    as_of: datetime,
    topics: TopicSettings,
    dimensions: list[str],
    care: CareCounter | None = None,
    page: int = 1_000,
    progress: Callable[[int], None] | None = None,
    after: str = "",
    until: str | None = None,
) -> Simulation:
    """Judge every customer at `as_of` as activating the candidate would (`judging`: the
    bases it would put in force), inside the caller's `async with uow:` (a snapshot that writes
    nothing); count per dimension who moves where, and what care the changes would cause.
    `after` / `until`: only the customers with ids in (after, until]."""
    started = time.monotonic()
    report = Simulation(base_version, candidate_version, as_of)
    for name in dimensions:
        report.dimensions[name] = DimensionMoves()
    step = TimePassed(as_of)
    # Customers nothing moves: counted by their labels (one tuple each), spread over the
    # matrices' diagonals at the end.
    names = tuple(dimensions)
    unmoved: Counter[tuple[str, ...]] = Counter()
    while True:
        ids = [cid for cid, _ in await uow.customers.versions_after(after, page)]
        if until is not None:
            ids = [cid for cid in ids if cid <= until]
        if not ids:
            break
        after = ids[-1]
        done = await reclassify(uow, judging, ids, step, topics, locked=True, observe=True)
        for before_state, after_state in done.judged:
            if after_state is None:
                continue
            report.customers += 1
            if after_state is before_state:
                held = before_state.dimensions
                unmoved[tuple(a.label if (a := held.get(n)) else NONE for n in names)] += 1
                continue
            before, now = _labels(before_state), _labels(after_state)
            cid = after_state.customer_id
            for name in now.keys() | before.keys():
                moves = report.dimensions.setdefault(name, DimensionMoves())
                moves.add(cid, before.get(name, NONE), now.get(name, NONE))
        report.changes += len(done.published)
        if care is not None and done.published:
            created, suppressed = await care.count(
                [(change_id(c), c) for c in done.published], as_of
            )
            report.care_actions.update(created)
            report.care_actions_suppressed.update(suppressed)
        uow.outbox.take()  # nothing is published
        if progress is not None:
            progress(report.customers)
        await asyncio.sleep(0)  # a page at a time: the consumer and the API go on between
    for labels, n in unmoved.items():
        for name, label in zip(names, labels, strict=True):
            report.dimensions[name].matrix.setdefault(label, Counter())[label] += n
    report.elapsed_ms = round((time.monotonic() - started) * 1000)
    return report


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Reports of disjoint shares of the customers (Simulation.as_json) as one."""
    first = reports[0]
    out: dict[str, Any] = {
        "base_version": first["base_version"],
        "candidate_version": first["candidate_version"],
        "as_of": first["as_of"],
        "customers": 0,
        "dimensions": {},
        "care_actions": Counter(),
        "care_actions_suppressed": Counter(),
        "changes": 0,
        "elapsed_ms": max(r["elapsed_ms"] for r in reports),
    }
    for report in reports:
        out["customers"] += report["customers"]
        out["changes"] += report["changes"]
        out["care_actions"].update(report["care_actions"])
        out["care_actions_suppressed"].update(report["care_actions_suppressed"])
        for name, moves in report["dimensions"].items():
            into = out["dimensions"].setdefault(name, {"changed": 0, "matrix": {}, "samples": {}})
            into["changed"] += moves["changed"]
            for before, row in moves["matrix"].items():
                target = into["matrix"].setdefault(before, Counter())
                target.update(row)
            for move, ids in moves["samples"].items():
                kept = into["samples"].setdefault(move, [])
                kept.extend(ids[: SAMPLES - len(kept)])
    for moves in out["dimensions"].values():
        moves["matrix"] = {b: dict(row) for b, row in sorted(moves["matrix"].items())}
    out["dimensions"] = dict(sorted(out["dimensions"].items()))
    out["care_actions"] = dict(sorted(out["care_actions"].items()))
    out["care_actions_suppressed"] = dict(sorted(out["care_actions_suppressed"].items()))
    return out
