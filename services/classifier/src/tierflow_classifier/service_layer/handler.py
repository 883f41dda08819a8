"""Applies one consumed batch of customer events, inside the consumer's transaction.

decode → drop repeats within the batch → lock the batch's customers → drop the events of
erased customers (dated through their erasure) → claim the event ids in the ledger (events
applied before drop out) → reclassify the batch's customers for "events arrived" → forget the
ledger entries of events that were rejected (they are dead-lettered) → move the clock. The
consumer stores the offsets and writes the outbox in the same transaction.

A `customer.erased` event splits the batch: the events before it are applied as above, then
the customer is erased (service_layer/erasure.py), then the rest follows, so a batch does
what the records did one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_classifier.adapters.clock import Clock
from tierflow_classifier.adapters.repository import partition_name
from tierflow_classifier.domain.erasure import EraseRequest
from tierflow_classifier.domain.model import (
    CustomerEvent,
    EventMeta,
    Feedback,
    Interaction,
    Override,
    ProfilePatch,
    Purchase,
    Refund,
    utc,
)
from tierflow_classifier.domain.reclassification import Arrival, EventsArrived
from tierflow_classifier.service_layer.erasure import erase_customer
from tierflow_classifier.service_layer.reclassify import Classifier, reclassify
from tierflow_classifier.service_layer.unit_of_work import SqlUnitOfWork, UnitOfWork
from tierflow_common import tracing
from tierflow_common.consumer import BatchOutcome, DeadLetter, Record
from tierflow_common.contract import decode_record
from tierflow_common.contract.customer_events import OverrideEvent, parse_topic_event
from tierflow_common.contract.events import (
    CustomerErasedEvent,
    FeedbackEvent,
    InteractionEvent,
    ProfileEvent,
    PurchaseEvent,
    RefundEvent,
)
from tierflow_common.erasure import is_erased
from tierflow_common.exceptions import PoisonRecord
from tierflow_common.outbox import with_traces
from tierflow_common.settings import TopicSettings
from tierflow_common.trace_context import TraceContext, from_kafka_headers


def to_domain(record: Record) -> CustomerEvent | EraseRequest:
    attrs = decode_record(record.key, record.value, record.headers)
    try:
        event = parse_topic_event(attrs)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = list(first["loc"])
        if loc and loc[0] == attrs.get("type"):
            loc = loc[1:]
        field = ".".join(str(p) for p in loc) or "(event)"
        raise PoisonRecord(f"{field}: {first['msg']}", field=field) from exc
    meta = EventMeta(event.source, event.id, event.subject, utc(event.time))
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
        case CustomerErasedEvent():
            return EraseRequest(meta)
        case OverrideEvent(data=d):
            expires = utc(d.expires_at) if d.expires_at is not None else None
            return Override(meta, d.dimension, d.label, d.reason, expires, d.override_id, d.by)
    raise PoisonRecord(f"unsupported event type {attrs.get('type')!r}", field="type")


async def apply_events(
    uow: UnitOfWork,
    classifier: Classifier,
    clock: Clock,
    topics: TopicSettings,
    records: Sequence[Record],
) -> BatchOutcome:
    """The use case behind the consumer: one batch of records, inside `uow`."""
    outcome = BatchOutcome()
    decoded: list[tuple[Record, CustomerEvent | EraseRequest]] = []
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
    traces = cause_traces(decoded)
    spans = customer_spans(decoded, traces) if tracing.enabled() else {}
    for cid, span in spans.items():
        own = tracing.context_of(span, traces.get(cid))
        if own is not None:
            traces[cid] = own  # the records then hang under the customer's span
    try:
        await _apply_decoded(uow, classifier, clock, topics, decoded, outcome, traces)
    finally:
        for span in spans.values():
            span.end()
    return outcome


def cause_traces(
    decoded: Sequence[tuple[Record, CustomerEvent | EraseRequest]],
) -> dict[str, TraceContext]:
    """Each customer's trace in the batch: its last event's (ce_traceparent), where any has
    one. A batch holds many customers' events: each customer keeps its own trace."""
    traces: dict[str, TraceContext] = {}
    seen: set[str] = set()
    for record, event in reversed(decoded):  # the last one decides: parse one per customer
        cid = event.meta.customer_id
        if cid in seen:
            continue
        seen.add(cid)
        trace = from_kafka_headers(record.headers)
        if trace is not None:
            traces[cid] = trace
    return traces


def customer_spans(
    decoded: Sequence[tuple[Record, CustomerEvent | EraseRequest]],
    traces: dict[str, TraceContext],
) -> dict[str, Span]:
    """One span per customer of the batch, child of the customer's own event's trace (a new
    trace where it came without one), linked to the batch's span."""
    counts: dict[str, int] = {}
    for _, event in decoded:
        cid = event.meta.customer_id
        counts[cid] = counts.get(cid, 0) + 1
    links = tracing.link_to_current()
    return {
        cid: tracing.start_span(
            "classify customer",
            traces.get(cid),
            attributes={"tierflow.events": n},
            links=links,
        )
        for cid, n in counts.items()
    }


async def _apply_decoded(
    uow: UnitOfWork,
    classifier: Classifier,
    clock: Clock,
    topics: TopicSettings,
    decoded: Sequence[tuple[Record, CustomerEvent | EraseRequest]],
    outcome: BatchOutcome,
    traces: dict[str, TraceContext],
) -> None:
    async with uow:
        erased: dict[str, datetime] = {}
        if decoded:
            ids = sorted({e.meta.customer_id for _, e in decoded})
            # Locked before the erasures are read: an erasure committed meanwhile is seen.
            await uow.customers.lock(ids)
            erased = await uow.erasures.boundaries(ids)
        segment: list[tuple[Record, CustomerEvent]] = []
        for record, event in decoded:
            meta = event.meta
            if isinstance(event, EraseRequest):
                await _apply(uow, classifier, clock, topics, segment, outcome)
                segment = []
                done = await erase_customer(
                    uow,
                    meta.customer_id,
                    through=meta.time,
                    cause=meta.cause,
                    now=datetime.now(UTC),
                    topics=topics,
                    locked=True,
                )
                erased[meta.customer_id] = done.erased_through
                outcome.applied += 1
            elif is_erased(erased, meta.customer_id, meta.time):
                outcome.duplicates += 1  # the erased customer's: never applied again
            else:
                segment.append((record, event))
        await _apply(uow, classifier, clock, topics, segment, outcome)
        # Each customer's records carry its trace (the outbox row's trace_context).
        outcome.emit.extend(with_traces(uow.outbox.take(), traces))


async def _apply(
    uow: UnitOfWork,
    classifier: Classifier,
    clock: Clock,
    topics: TopicSettings,
    decoded: Sequence[tuple[Record, CustomerEvent]],
    outcome: BatchOutcome,
) -> None:
    """Apply events whose customers the caller has locked (their records go to uow.outbox)."""
    if not decoded:
        return
    claimed = await uow.ledger.claim(
        [(e.meta.source, e.meta.event_id, e.meta.customer_id, e.meta.time) for _, e in decoded]
    )
    fresh = [(r, e) for r, e in decoded if (e.meta.source, e.meta.event_id) in claimed]
    outcome.duplicates += len(decoded) - len(fresh)
    if not fresh:
        return
    judge_at = await clock.judging(uow.watermarks)
    arrivals: dict[str, list[Arrival]] = {}
    latest: dict[str, datetime] = {}
    for index, (record, event) in enumerate(fresh):
        at = judge_at(event.meta.time)
        arrivals.setdefault(event.meta.customer_id, []).append(Arrival(index, event, at))
        name = partition_name(record.topic, record.partition)
        if name not in latest or latest[name] < at:
            latest[name] = at
    done = await reclassify(
        uow, classifier.basis(), list(arrivals), EventsArrived(arrivals), topics, locked=True
    )
    released: list[tuple[str, str]] = []
    for rejected in sorted(done.rejected, key=lambda r: r.index):
        record, event = fresh[rejected.index]
        outcome.dead.append(DeadLetter(record, rejected.error.reason, rejected.error.field))
        released.append((event.meta.source, event.meta.event_id))
    await uow.ledger.release(released)
    await clock.events_applied(uow.watermarks, latest)
    outcome.applied += done.applied
    outcome.duplicates += done.repeats


@dataclass
class ClassifierHandler:
    """The consumer's handler: the batch's use case in a unit of work joining the consumer's
    transaction (which also stores the offsets)."""

    classifier: Classifier
    topics: TopicSettings
    clock: Clock
    unit_of_work: Callable[[AsyncConnection], UnitOfWork] = SqlUnitOfWork.joining

    async def __call__(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        if not tracing.enabled():
            return await apply_events(
                self.unit_of_work(conn), self.classifier, self.clock, self.topics, records
            )
        attributes = {"messaging.system": "kafka", "messaging.batch.message_count": len(records)}
        with tracing.span("classifier batch", kind=SpanKind.CONSUMER, attributes=attributes) as s:
            outcome = await apply_events(
                self.unit_of_work(conn), self.classifier, self.clock, self.topics, records
            )
            s.set_attributes(
                {"tierflow.applied": outcome.applied, "tierflow.dead_lettered": len(outcome.dead)}
            )
            return outcome
