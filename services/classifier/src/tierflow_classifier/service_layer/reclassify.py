"""The one use case that changes classes: reclassify a set of customers for a cause.

Inside the caller's `async with uow:` it locks the customers (unless the caller already holds
their locks), loads their state, runs the cause's pure step for each (domain/reclassification),
saves what changed, brings review deadlines forward, records the changes in the history
(a change computed twice for the same cause has the same id and is kept once) and puts their
records in the outbox. The consumer (events arrived), the review scheduler (time passed, rules
changed) and the population sweep (the population moved) all come through here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from tierflow_classifier.adapters.churn_store import ChurnModelHolder
from tierflow_classifier.adapters.population_store import PopulationHolder
from tierflow_classifier.domain.apply import VALUE_TIER
from tierflow_classifier.domain.change_ids import ChangeRecord, change_id, change_records_of
from tierflow_classifier.domain.change_scores import Scored, scores_by_customer
from tierflow_classifier.domain.classify import Outside
from tierflow_classifier.domain.model import Change, CustomerState
from tierflow_classifier.domain.population import PopulationStats
from tierflow_classifier.domain.reclassification import Basis, Canary, Judging, Rejected, Step
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.service_layer.unit_of_work import OutboxItem, UnitOfWork
from tierflow_common.contract import (
    CLASSIFICATIONS_CHANGED_TYPE,
    TIER_CHANGED_TYPE,
    EmittedEvent,
)
from tierflow_common.contract.ids import rfc3339
from tierflow_common.settings import TopicSettings

log = structlog.get_logger(__name__)

SOURCE = "tierflow/classifier"


@dataclass
class Classifier:
    """What classes are judged by in this process right now: the rule set in force (during a
    partial rollout: the candidate for its share of customers, the previous version for the
    rest), and the population statistics and churn model. Background tasks replace each when
    a new version appears."""

    rules: RuleSet
    population: PopulationHolder
    churn: ChurnModelHolder
    previous: RuleSet | None = None
    rollout_percent: float = 100.0
    activation: int = 0
    # Every rule set this process has compiled, by version (what a switch compares with).
    known: dict[str, RuleSet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known.setdefault(self.rules.version, self.rules)

    def put_in_force(
        self, rules: RuleSet, previous: RuleSet | None, percent: float, activation: int
    ) -> None:
        for rule_set in (rules, previous):
            if rule_set is not None:
                self.known.setdefault(rule_set.version, rule_set)
        self.rules, self.previous = rules, previous
        self.rollout_percent, self.activation = percent, activation

    def basis(self, population: PopulationStats | None = None) -> Judging:
        """How each customer is judged now; `population`: these statistics instead of the
        ones in force (a refresh judging by the statistics it just built)."""
        outside = Outside(population or self.population.stats, self.churn.model)
        candidate = Basis(self.rules, outside, self.activation, self.known)
        if self.previous is None or self.rollout_percent >= 100:
            return candidate
        previous = Basis(self.previous, outside, self.activation, self.known)
        return Canary(candidate, previous, self.rollout_percent)


@dataclass
class Reclassified:
    """What a call did: customers stored, changes published, events applied or rejected."""

    saved: int = 0
    published: list[Change] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    applied: int = 0
    repeats: int = 0
    reviews_lowered: int = 0
    # (state before, state after) of every customer, when asked for (a simulation reads them).
    judged: list[tuple[CustomerState | None, CustomerState | None]] = field(default_factory=list)


async def reclassify(
    uow: UnitOfWork,
    basis: Judging,
    customer_ids: Sequence[str],
    step: Step,
    topics: TopicSettings,
    *,
    locked: bool = False,
    observe: bool = False,
) -> Reclassified:
    ids = sorted(set(customer_ids))
    result = Reclassified()
    if not ids:
        return result
    if not locked:
        await uow.customers.lock(ids)
    states = await uow.customers.load(ids)
    saved: list[CustomerState] = []
    changes: list[Change] = []
    reviews: list[tuple[str, datetime]] = []
    changed: dict[str, tuple[CustomerState, datetime]] = {}
    for cid in ids:
        before = states.get(cid)
        judged = step(before, cid, basis.for_customer(cid))
        if judged.state is not None:
            saved.append(judged.state)
        after = judged.state or before
        if judged.changes and after is not None:
            changed[cid] = (after, max(c.effective_at for c in judged.changes))
        if observe:
            result.judged.append((before, judged.state or before))
        changes.extend(judged.changes)
        if judged.review_by is not None:
            reviews.append((cid, judged.review_by))
        result.rejected.extend(judged.rejected)
        result.applied += judged.applied
        result.repeats += judged.repeats
    await uow.customers.save(saved)
    await uow.customers.lower_reviews(reviews)
    result.saved = len(saved)
    result.reviews_lowered = len(reviews)
    result.published = await publish(uow, changes, topics, scores_by_customer(basis, changed))
    return result


async def publish(
    uow: UnitOfWork,
    changes: Sequence[Change],
    topics: TopicSettings,
    scores: Mapping[str, Scored] | None = None,
) -> list[Change]:
    """Record changes in the history and put the new ones' records in the outbox."""
    if not changes:
        return []
    identified = [(change_id(c), c) for c in changes]
    records = await uow.history.record(identified)
    recorded = {cid for r in records for cid, _ in r.items}
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
    uow.outbox.add(outbox_records(records, topics, scores))
    return list(fresh.values())


def change_records(
    changes: Sequence[tuple[str, Change]],
    topics: TopicSettings,
    scores: Mapping[str, Scored] | None = None,
) -> list[OutboxItem]:
    """The records of (change id, change) pairs: on `customer-classification-changed` one
    record per customer, cause and instant holding all of its changes (contract version 2)
    and the customer's `scores` where known; on `customer-tier-changed` one record per
    value-tier change, its id the change id."""
    return outbox_records(change_records_of(changes), topics, scores)


def outbox_records(
    records: Sequence[ChangeRecord],
    topics: TopicSettings,
    scores: Mapping[str, Scored] | None = None,
) -> list[OutboxItem]:
    """change_records() of changes already grouped (as the history stored them)."""
    out: list[OutboxItem] = []
    for r in records:
        out.append(
            (
                topics.classification_changed,
                EmittedEvent(
                    id=r.record_id,
                    type=CLASSIFICATIONS_CHANGED_TYPE,
                    source=SOURCE,
                    subject=r.customer_id,
                    time=r.effective_at,
                    data={
                        "customer_id": r.customer_id,
                        "cause": r.cause,
                        "effective_at": rfc3339(r.effective_at),
                        "changes": r.body,
                        "scores": _scores_data(scores, r.customer_id),
                    },
                ),
            )
        )
        out += [
            (topics.tier_changed, tier_event(cid, c))
            for cid, c in r.items
            if c.dimension == VALUE_TIER
        ]
    return out


def _scores_data(scores: Mapping[str, Scored] | None, customer: str) -> dict[str, float] | None:
    scored = scores.get(customer) if scores else None
    return None if scored is None else scored.as_data()


def tier_event(cid: str, change: Change) -> EmittedEvent:
    """The `customer-tier-changed` CloudEvent of a value-tier change: its data is what
    ClassificationChangedData serialises to (tests/unit/test_change_payload.py holds the two
    together), built without the model; its id is the change id."""
    return EmittedEvent(
        id=cid,
        type=TIER_CHANGED_TYPE,
        source=SOURCE,
        subject=change.customer_id,
        time=change.effective_at,
        data=change_payload(change),
    )


def change_payload(change: Change) -> dict[str, Any]:
    to = change.to
    return {
        "customer_id": change.customer_id,
        "dimension": change.dimension,
        "from": change.from_label,
        "to": to.label,
        "reason": to.reason,
        "explanation": to.explanation,
        "cause": change.cause,
        "effective_at": rfc3339(change.effective_at),
        "rule_set_version": to.rule_set_version,
    }
