"""Why a customer is re-judged, as pure steps: `step(state, basis) -> Judged`.

There are three causes — events arrived, time passed (or the rules changed), the population
moved — and one use case (service_layer/reclassify.py) that loads the customers, runs the
step for each, and stores what it judged. Simulating a rule set is the same step against
another basis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from tierflow_classifier.domain import rule_versions
from tierflow_classifier.domain.apply import already_applied, apply
from tierflow_classifier.domain.classify import NOTHING, Outside, catch_up, classify
from tierflow_classifier.domain.classify import effective_version as _effective_version
from tierflow_classifier.domain.model import Change, CustomerEvent, CustomerState
from tierflow_classifier.domain.population_review import after_refresh, judge_at
from tierflow_classifier.domain.rule_versions import in_rollout
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.exceptions import UnprocessableEvent


@dataclass(frozen=True)
class Basis:
    """What classes are judged by: the rule set and what lies outside the customer
    (population statistics, churn model). `activation`: the number of the rule-set
    activation that put `rules` in force (it names the changes a switch of rule set causes);
    `known`: the rule sets this process knows by version, so a switch can tell which
    dimensions the new one redefines."""

    rules: RuleSet
    outside: Outside = NOTHING
    activation: int = 0
    known: Mapping[str, RuleSet] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The effective version a customer judged by this basis records."""
        return _effective_version(self.rules, self.outside)

    # A Basis judges every customer alike: it is its own Judging.
    def for_customer(self, customer_id: str) -> Basis:
        return self

    def version_for(self, customer_id: str) -> str:
        return self.version

    @property
    def key(self) -> str:
        return self.version

    def rule_sets(self) -> tuple[RuleSet, ...]:
        return (self.rules,)


class Judging(Protocol):
    """Which basis judges each customer: one Basis for all, or a Canary."""

    def for_customer(self, customer_id: str) -> Basis: ...

    def version_for(self, customer_id: str) -> str: ...

    @property
    def key(self) -> str:
        """Equal keys: every customer is judged by the same basis under both."""
        ...

    def rule_sets(self) -> tuple[RuleSet, ...]: ...


@dataclass(frozen=True)
class Canary:
    """A partial rollout: the stable `percent` share of customers (hash of the id,
    domain/rule_versions.in_rollout) is judged by `candidate`, the rest by `previous`."""

    candidate: Basis
    previous: Basis
    percent: float

    def for_customer(self, customer_id: str) -> Basis:
        return self.candidate if in_rollout(customer_id, self.percent) else self.previous

    def version_for(self, customer_id: str) -> str:
        return self.for_customer(customer_id).version

    @property
    def key(self) -> str:
        return f"{self.candidate.version}@{self.percent:g}|{self.previous.version}"

    def rule_sets(self) -> tuple[RuleSet, ...]:
        return (self.candidate.rules, self.previous.rules)


RULE_SET_ACTIVATED = "rule_set_activated"


def rules_part(version: str) -> str:
    """The rule-set version inside an effective version (`<rules>[+<churn model>]`)."""
    return version.split("+", 1)[0]


@dataclass(frozen=True)
class Rejected:
    """An event of the step that could not be applied (it goes to the dead-letter topic)."""

    index: int
    error: UnprocessableEvent


@dataclass(frozen=True)
class Judged:
    """A step's outcome for one customer. `state`: the state to store, None when nothing
    about the customer changed. `review_by`: a review deadline to bring forward to."""

    state: CustomerState | None
    changes: Sequence[Change] = ()
    review_by: datetime | None = None
    rejected: Sequence[Rejected] = ()
    applied: int = 0
    repeats: int = 0


UNCHANGED = Judged(None)


class Step(Protocol):
    def __call__(self, state: CustomerState | None, customer_id: str, basis: Basis) -> Judged: ...


@dataclass(frozen=True)
class Arrival:
    """One event to apply, judged at `at` (the clock decides: wall time or its own time);
    `index` identifies it to the caller."""

    index: int
    event: CustomerEvent
    at: datetime


@dataclass(frozen=True)
class EventsArrived:
    """Each customer's new events, in partition (= arrival) order: every deadline due before
    an event fires first, at its own instant, then the event is folded in and judged."""

    arrivals: dict[str, list[Arrival]] = field(default_factory=dict)

    def __call__(self, state: CustomerState | None, customer_id: str, basis: Basis) -> Judged:
        rules, outside = basis.rules, basis.outside
        changes: list[Change] = []
        rejected: list[Rejected] = []
        applied = repeats = 0
        for arrival in self.arrivals.get(customer_id, ()):
            if already_applied(state, arrival.event):
                repeats += 1  # a resend the ledger no longer remembers (past its window)
                continue
            try:
                caught, fired = (
                    catch_up(state, rules, until=arrival.at, outside=outside)
                    if state is not None
                    else (None, [])
                )
                new, more = apply(caught, arrival.event, rules, at=arrival.at, outside=outside)
            except UnprocessableEvent as exc:
                rejected.append(Rejected(arrival.index, exc))
                continue
            state = new
            changes += fired
            changes += more
            applied += 1
        return Judged(
            state if applied else None,
            changes,
            rejected=rejected,
            applied=applied,
            repeats=repeats,
        )


@dataclass(frozen=True)
class TimePassed:
    """The clock reads `now`: fire the customer's deadlines up to it; a customer judged by
    another rule set is judged again by this one (cause "rule_set_activated:<version>/<n>",
    n the activation), one judged by another churn model by the new model (cause
    "rules:<effective version>"). The dimensions the new rule set redefines are decided by its
    rules without hysteresis."""

    now: datetime

    def __call__(self, state: CustomerState | None, customer_id: str, basis: Basis) -> Judged:
        if state is None:
            return UNCHANGED
        rules, outside = basis.rules, basis.outside
        new, fired = catch_up(state, rules, until=self.now, outside=outside)
        version = basis.version
        # What the customer was judged by before this step (catch_up's deadlines, fired by
        # these rules, already record them).
        if state.rule_set_version != version:
            before = rules_part(state.rule_set_version)
            if before != rules.version:
                cause = f"{RULE_SET_ACTIVATED}:{rules.version}/{basis.activation}"
                redefined = rule_versions.redefined(basis.known.get(before), rules)
            else:
                cause, redefined = f"rules:{version}", frozenset()
            # Never before the customer's own latest instant (in replay its partition may run
            # ahead of the watermark): its history must not go back in time.
            new, more = classify(
                new,
                rules,
                at=judge_at(new, self.now),
                cause=cause,
                outside=outside,
                redefined=redefined,
            )
            fired += more
        return Judged(new if new != state else None, fired)


@dataclass(frozen=True)
class PopulationMoved:
    """New population statistics (in `basis.outside`), the clock reading `at`: a customer
    whose RFM/ABC label they change is judged again (cause "population:<version>"); one whose
    next recency-quintile crossing moved earlier gets its review deadline brought forward.
    A customer on another rule set or churn model is left to TimePassed, which reads these
    statistics too."""

    at: datetime

    def __call__(self, state: CustomerState | None, customer_id: str, basis: Basis) -> Judged:
        stats = basis.outside.population
        if state is None or stats is None or state.rule_set_version != basis.version:
            return UNCHANGED
        rules, outside = basis.rules, basis.outside
        verdict = after_refresh(state, rules, outside, self.at)
        if verdict.reclassify_at is None:
            return Judged(None, review_by=verdict.review_by)
        when = verdict.reclassify_at
        new, fired = catch_up(state, rules, until=when, outside=outside)
        new, more = classify(
            new, rules, at=when, cause=f"population:{stats.version}", outside=outside
        )
        return Judged(new, [*fired, *more])
