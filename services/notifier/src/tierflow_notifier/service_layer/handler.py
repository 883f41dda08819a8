"""Turns a batch of classification changes into care actions, exactly once per (trigger, rule),
and keeps the label-driven cadences (e.g. VIP revisits) scheduled while the label holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.consumer import BatchOutcome, DeadLetter, Record
from tierflow_common.contract import ClassificationChangedData, decode_record
from tierflow_common.exceptions import PoisonRecord
from tierflow_notifier.adapters import projection
from tierflow_notifier.domain.playbooks import (
    CadenceTrigger,
    PlannedAction,
    Playbook,
    plan_actions,
)
from tierflow_notifier.domain.schedules import ScheduleEntry, cadence_entry
from tierflow_notifier.service_layer.actions import ActionWriter, Tally


def decode_change(record: Record) -> tuple[str, ClassificationChangedData]:
    attrs = decode_record(record.key, record.value, record.headers)
    event_id = attrs.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise PoisonRecord("missing ce_id", field="headers.ce_id")
    try:
        return event_id, ClassificationChangedData.model_validate(attrs["data"])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field_ = "data." + ".".join(str(p) for p in first["loc"])
        raise PoisonRecord(f"{field_}: {first['msg']}", field=field_) from exc


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


@dataclass
class NotifierHandler:
    playbook: Playbook
    writer: ActionWriter
    clock: Callable[[], datetime]
    tally: CommitTally = field(default_factory=CommitTally)

    async def __call__(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        self.tally.reset()
        outcome = BatchOutcome()
        planned: list[PlannedAction] = []
        labels: dict[str, dict[str, str]] = {}
        # The last word per (customer, cadence rule) in this batch: enter (entry) or leave.
        cadence: dict[tuple[str, str], ScheduleEntry | str] = {}
        cadence_rules = self.playbook.scheduled(CadenceTrigger)
        for record in records:
            try:
                trigger_id, change = decode_change(record)
            except PoisonRecord as exc:
                outcome.dead.append(DeadLetter(record, exc.reason, exc.field))
                continue
            cid = change.customer_id
            planned += plan_actions(
                self.playbook,
                trigger_event_id=trigger_id,
                dimension=change.dimension,
                from_label=change.from_label,
                to_label=change.to_label,
                change_reason=change.reason,
                customer_id=cid,
                explanation=change.explanation,
            )
            labels.setdefault(cid, {})[change.dimension] = change.to_label
            for rule in cadence_rules:
                trig = rule.trigger
                assert isinstance(trig, CadenceTrigger)
                if trig.dimension != change.dimension:
                    continue
                if change.to_label == trig.label:
                    cadence[(cid, rule.id)] = cadence_entry(rule, cid, change.effective_at)
                elif change.from_label == trig.label:
                    cadence[(cid, rule.id)] = trig.label
        await projection.merge_labels(conn, labels)
        await projection.end_cadences(
            conn, [(c, r, v) for (c, r), v in cadence.items() if isinstance(v, str)]
        )
        await projection.upsert_schedules(
            conn, [v for v in cadence.values() if isinstance(v, ScheduleEntry)], "newer"
        )
        written = await self.writer.write(conn, planned, self.clock())
        outcome.emit.extend(written.emit)
        outcome.applied = written.tally.total_created
        outcome.duplicates = written.tally.duplicates
        self.tally.pending = written.tally
        return outcome
