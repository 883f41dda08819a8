"""Turns a batch of classification changes into care actions, exactly once per (trigger, rule),
and keeps the label-driven cadences (e.g. VIP revisits) scheduled while the label holds.

Most changes trigger nothing: of a new customer's four first assignments only the value tier's
may. Every record is still decoded and validated (poison is dead-lettered with its field and
reason), on the fast path where it is plainly valid (adapters/changes.py); a change of a
dimension no rule, cadence or projection reads then costs nothing more, and a batch that leaves
nothing to write writes nothing but its offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common import tracing
from tierflow_common.consumer import BatchOutcome, DeadLetter, Record
from tierflow_common.exceptions import PoisonRecord
from tierflow_common.trace_context import TraceContext, from_kafka_headers
from tierflow_notifier.adapters import customer_scores, projection
from tierflow_notifier.adapters.changes import Change, Erasure, decode_changes
from tierflow_notifier.domain.playbooks import (
    ANY,
    CadenceTrigger,
    ChangeTrigger,
    PlannedAction,
    Playbook,
    Rule,
    plan_actions,
)
from tierflow_notifier.domain.queue import Scores
from tierflow_notifier.domain.schedules import ScheduleEntry, cadence_entry
from tierflow_notifier.service_layer.actions import ActionWriter, Tally, WriteResult
from tierflow_notifier.service_layer.erasure import erase_customer


@dataclass
class CommitTally:
    """Metrics of the last handler call, published by the consumer's on-commit hook, so a
    rolled-back and retried batch is not counted twice."""

    pending: Tally = field(default_factory=Tally)

    def reset(self) -> None:
        self.pending = Tally()

    def publish(self) -> None:
        self.pending.publish()
        self.pending = Tally()


def label_dimensions(playbook: Playbook) -> frozenset[str]:
    """The dimensions whose current label the notifier keeps per customer: the value tier (a
    coupon's value and every action's `details.tier`) and those a cadence follows (a due
    cadence fires only while the customer still holds its label). No other label is read."""
    return frozenset({projection.TIER_DIMENSION, *playbook.cadence_dimensions})


@dataclass
class NotifierHandler:
    playbook: Playbook
    writer: ActionWriter
    clock: Callable[[], datetime]
    tally: CommitTally = field(default_factory=CommitTally)
    # What the last call left for others once it commits (the on-commit hook reads them): the
    # earliest due time it scheduled (the scheduler), whether it enqueued records (the relay)
    # and deliveries (the delivery workers).
    earliest_due: datetime | None = field(default=None, init=False)
    enqueued: bool = field(default=False, init=False)
    delivering: bool = field(default=False, init=False)
    _labelled: frozenset[str] = field(init=False)
    _cadences: dict[str, list[Rule]] = field(init=False)
    _every_dimension: bool = field(init=False)
    _actionable: frozenset[str] = field(init=False)
    _traces: dict[str, TraceContext] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._labelled = label_dimensions(self.playbook)
        self._cadences = {}
        for rule in self.playbook.scheduled(CadenceTrigger):
            assert isinstance(rule.trigger, CadenceTrigger)
            self._cadences.setdefault(rule.trigger.dimension, []).append(rule)
        change_dims = {
            r.trigger.dimension for r in self.playbook.rules if isinstance(r.trigger, ChangeTrigger)
        }
        self._every_dimension = ANY in change_dims
        self._actionable = frozenset(change_dims)

    async def _write(self, conn: AsyncConnection, planned: Sequence[PlannedAction]) -> WriteResult:
        """Create the actions; with tracing on, in one span per customer ("notifier action",
        child of the customer's change's trace), whose context the actions then carry."""
        if not tracing.enabled():
            return await self.writer.write(conn, planned, self.clock(), self._traces)
        counts: dict[str, int] = {}
        for p in planned:
            counts[p.customer_id] = counts.get(p.customer_id, 0) + 1
        spans = {
            cid: tracing.start_span(
                "notifier action", self._traces.get(cid), attributes={"tierflow.planned": n}
            )
            for cid, n in counts.items()
        }
        traces = {
            cid: trace
            for cid, span in spans.items()
            if (trace := tracing.context_of(span, self._traces.get(cid))) is not None
        }
        try:
            return await self.writer.write(conn, planned, self.clock(), traces)
        finally:
            for span in spans.values():
                span.end()

    def wanted(self, dimension: str) -> bool:
        """Whether a change of `dimension` can matter: a rule may fire on it, a cadence follows
        it, or its label is kept."""
        return self._every_dimension or dimension in self._actionable or dimension in self._labelled

    async def __call__(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        self.tally.reset()
        self.earliest_due = None
        self.enqueued = self.delivering = False
        outcome = await self._handle(conn, records)
        self.enqueued = bool(outcome.emit or outcome.dead)
        self.delivering = bool(outcome.emit and self.writer.endpoints)
        return outcome

    async def _handle(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        """The batch's changes; an erasure record splits it (the changes before it are acted
        on first, then the customer is erased), so a batch does what its records did one by
        one."""
        outcome = BatchOutcome()
        wanted: list[Change] = []
        self._traces = {}
        for record in records:
            try:
                decoded = decode_changes(record)
            except PoisonRecord as exc:
                outcome.dead.append(DeadLetter(record, exc.reason, exc.field))
                continue
            if isinstance(decoded, Erasure):
                await self._act(conn, wanted, outcome)
                wanted = []
                await erase_customer(conn, decoded)
                outcome.applied += 1
                continue
            kept = [c for c in decoded if self.wanted(c.dimension)]
            if kept:
                trace = from_kafka_headers(record.headers)
                if trace is not None:  # a customer's actions join its change's trace
                    self._traces[kept[0].customer_id] = trace
                wanted += kept
        await self._act(conn, wanted, outcome)
        return outcome

    async def _act(
        self, conn: AsyncConnection, wanted: Sequence[Change], outcome: BatchOutcome
    ) -> None:
        if not wanted:
            return
        planned: list[PlannedAction] = []
        labels: dict[str, dict[str, str]] = {}
        scores: dict[str, tuple[Scores, datetime]] = {}
        # The last word per (customer, cadence rule) in this batch: enter (entry) or leave.
        cadence: dict[tuple[str, str], ScheduleEntry | str] = {}
        for change in wanted:
            cid = change.customer_id
            dim = change.dimension
            planned += plan_actions(
                self.playbook,
                trigger_event_id=change.event_id,
                dimension=dim,
                from_label=change.from_label,
                to_label=change.to_label,
                change_reason=change.reason,
                customer_id=cid,
                explanation=change.explanation,
                scores=change.scores,
            )
            if dim in self._labelled:
                labels.setdefault(cid, {})[dim] = change.to_label
            if change.scores is not None:
                scores[cid] = (change.scores, change.effective_at)
            for rule in self._cadences.get(dim, ()):
                trig = rule.trigger
                assert isinstance(trig, CadenceTrigger)
                if change.to_label == trig.label:
                    cadence[(cid, rule.id)] = cadence_entry(rule, cid, change.effective_at)
                elif change.from_label == trig.label:
                    cadence[(cid, rule.id)] = trig.label
        entries = [v for v in cadence.values() if isinstance(v, ScheduleEntry)]
        ended = [(c, r, v) for (c, r), v in cadence.items() if isinstance(v, str)]
        # Labels first: the actions below take the tier as of the end of this batch.
        await projection.project_changes(conn, labels, ended, entries)
        await customer_scores.note_scores(conn, scores)  # for scheduled actions (scheduler.py)
        if entries:
            due = min(e.due_at for e in entries)
            self.earliest_due = due if self.earliest_due is None else min(self.earliest_due, due)
        if planned:
            written = await self._write(conn, planned)
            outcome.emit.extend(written.emit)
            outcome.applied += written.tally.total_created
            outcome.duplicates += written.tally.duplicates
            self.tally.pending.add(written.tally)
