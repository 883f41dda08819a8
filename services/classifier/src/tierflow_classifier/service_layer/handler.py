"""Applies one consumed batch of customer events inside the consumer's transaction.

Order of work (all in one transaction with the offsets and the outbox):
decode → claim event ids in the ledger (duplicates drop out) → lock the batch's customers →
load their state → apply each new event in partition order → save state, history and outputs.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.churn_store import ChurnModelHolder
from tierflow_classifier.adapters.clock import Clock, WallClock
from tierflow_classifier.adapters.population_store import PopulationHolder
from tierflow_classifier.domain.apply import VALUE_TIER, apply
from tierflow_classifier.domain.classify import Outside, catch_up
from tierflow_classifier.domain.model import (
    Change,
    CustomerEvent,
    CustomerState,
    EventMeta,
    Feedback,
    Interaction,
    ProfilePatch,
    Purchase,
    Refund,
)
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.exceptions import UnprocessableEvent
from tierflow_common.consumer import BatchOutcome, DeadLetter, Record
from tierflow_common.contract import (
    CLASSIFICATION_CHANGED_TYPE,
    TIER_CHANGED_TYPE,
    ClassificationChangedData,
    EmittedEvent,
    decode_record,
    parse_customer_event,
)
from tierflow_common.contract.events import (
    FeedbackEvent,
    InteractionEvent,
    ProfileEvent,
    PurchaseEvent,
    RefundEvent,
)
from tierflow_common.contract.kafka_binding import KafkaRecord
from tierflow_common.exceptions import PoisonRecord
from tierflow_common.settings import TopicSettings

log = structlog.get_logger(__name__)

CHANGE_NAMESPACE = uuid.UUID("6f1c7a53-3c1e-4f0c-9a8e-2b7d4c1e9a10")
SOURCE = "tierflow/classifier"


def change_id(change: Change) -> str:
    """Stable per (cause, customer, dimension): a redelivered cause yields the same id."""
    return str(
        uuid.uuid5(CHANGE_NAMESPACE, f"{change.cause}|{change.customer_id}|{change.dimension}")
    )


def to_domain(record: Record) -> CustomerEvent:
    attrs = decode_record(record.key, record.value, record.headers)
    try:
        event = parse_customer_event(attrs)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = list(first["loc"])
        if loc and loc[0] == attrs.get("type"):
            loc = loc[1:]
        field = ".".join(str(p) for p in loc) or "(event)"
        raise PoisonRecord(f"{field}: {first['msg']}", field=field) from exc
    meta = EventMeta(event.source, event.id, event.subject, event.time)
    match event:
        case PurchaseEvent(data=d):
            return Purchase(
                meta,
                d.order_id,
                d.amount,
                d.currency,
                discounted=bool((d.discount_amount or 0) > 0 or d.coupon_code),
            )
        case RefundEvent(data=d):
            return Refund(meta, d.order_id, d.amount, d.currency)
        case InteractionEvent(data=d):
            return Interaction(meta, d.kind, d.complaint_id, d.referred_customer_id)
        case FeedbackEvent(data=d):
            return Feedback(meta, d.satisfaction, d.nps)
        case ProfileEvent(data=d):
            return ProfilePatch(meta, d.model_dump(mode="json", exclude_unset=True))
    raise PoisonRecord(f"unsupported event type {attrs.get('type')!r}", field="type")


def change_event(cid: str, change: Change) -> EmittedEvent:
    data = ClassificationChangedData(
        customer_id=change.customer_id,
        dimension=change.dimension,
        from_label=change.from_label,
        to_label=change.to.label,
        reason=change.to.reason,
        explanation=dict(change.to.explanation),
        cause=change.cause,
        effective_at=change.effective_at,
        rule_set_version=change.to.rule_set_version,
    )
    return EmittedEvent(
        id=cid,
        type=CLASSIFICATION_CHANGED_TYPE,
        source=SOURCE,
        subject=change.customer_id,
        time=change.effective_at,
        data=data.model_dump(mode="json", by_alias=True),
    )


@dataclass
class ClassifierHandler:
    rules: RuleSet
    topics: TopicSettings
    clock: Clock = field(default_factory=WallClock)
    population: PopulationHolder = field(default_factory=PopulationHolder)
    churn: ChurnModelHolder = field(default_factory=ChurnModelHolder)

    async def __call__(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        outcome = BatchOutcome()
        decoded: list[tuple[Record, CustomerEvent]] = []
        seen: set[tuple[str, str]] = set()
        for record in records:
            try:
                event = to_domain(record)
            except PoisonRecord as exc:
                outcome.dead.append(DeadLetter(record, exc.reason, exc.field))
                continue
            key = (event.meta.source, event.meta.event_id)
            if key in seen:
                outcome.duplicates += 1
                continue
            seen.add(key)
            decoded.append((record, event))
        claimed = await repo.claim_events(
            conn, [(e.meta.source, e.meta.event_id, e.meta.customer_id) for _, e in decoded]
        )
        fresh = [(r, e) for r, e in decoded if (e.meta.source, e.meta.event_id) in claimed]
        outcome.duplicates += len(decoded) - len(fresh)
        if not fresh:
            return outcome
        customer_ids = sorted({e.meta.customer_id for _, e in fresh})
        await repo.lock_customers(conn, customer_ids)
        states: dict[str, CustomerState] = await repo.load_states(conn, customer_ids)
        replay = self.clock.mode == "event_time"
        now = None if replay else await self.clock.now(conn)
        changes: list[Change] = []
        released: list[tuple[str, str]] = []
        touched: set[str] = set()
        marks: dict[tuple[str, int], datetime] = {}
        for record, event in fresh:
            # Production judges at the wall clock. Replay judges each event at its own time (a
            # customer's events share a partition, so they arrive in order); the scheduler fires
            # deadlines only up to the slowest partition's watermark.
            at = event.meta.time if now is None else max(now, event.meta.time)
            if replay:
                tp = (record.topic, record.partition)
                marks[tp] = max(marks.get(tp, at), at)
            previous = states.get(event.meta.customer_id)
            try:
                outside = Outside(self.population.stats, self.churn.model)
                caught_up, fired = (
                    catch_up(previous, self.rules, until=at, outside=outside)
                    if previous
                    else (None, [])
                )
                state, new_changes = apply(caught_up, event, self.rules, at=at, outside=outside)
            except UnprocessableEvent as exc:
                outcome.dead.append(DeadLetter(record, exc.reason, exc.field))
                released.append((event.meta.source, event.meta.event_id))
                continue
            states[event.meta.customer_id] = state
            touched.add(event.meta.customer_id)
            changes.extend(fired)
            changes.extend(new_changes)
            outcome.applied += 1
        await repo.release_events(conn, released)
        await repo.save_states(conn, [states[c] for c in sorted(touched)])
        for (topic, partition), mark in marks.items():
            await repo.advance_watermark(conn, repo.partition_name(topic, partition), mark)
        outcome.emit.extend(await publish_changes(conn, changes, self.topics))
        return outcome


async def publish_changes(
    conn: AsyncConnection, changes: Sequence[Change], topics: TopicSettings
) -> list[tuple[str, EmittedEvent | KafkaRecord]]:
    """Record changes in the history and return the records to enqueue in the outbox."""
    identified = [(change_id(c), c) for c in changes]
    recorded = await repo.record_changes(conn, identified)
    fresh: dict[str, Change] = {}
    for cid, change in identified:
        if cid in recorded and cid not in fresh:
            fresh[cid] = change
        else:
            log.warning(
                "duplicate_change_dropped",
                change_id=cid,
                customer_id=change.customer_id,
                dimension=change.dimension,
                cause=change.cause,
            )
    identified = list(fresh.items())
    out: list[tuple[str, EmittedEvent | KafkaRecord]] = []
    for cid, change in identified:
        emitted = change_event(cid, change)
        out.append((topics.classification_changed, emitted))
        if change.dimension == VALUE_TIER:
            out.append((topics.tier_changed, _retyped(emitted, TIER_CHANGED_TYPE)))
        log.info(
            "classification_changed",
            customer_id=change.customer_id,
            dimension=change.dimension,
            from_label=change.from_label,
            to_label=change.to.label,
            cause=change.cause,
        )
    return out


def _retyped(event: EmittedEvent, type_: str) -> EmittedEvent:
    return EmittedEvent(
        id=event.id,
        type=type_,
        source=event.source,
        subject=event.subject,
        time=event.time,
        data=event.data,
    )
