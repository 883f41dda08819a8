"""Which customers a new population must re-evaluate, and when. Pure.

A new population statistic moves RFM scores and ABC classes without any event. Instead of
re-classifying everyone, the refresh asks for each customer: would a population-relative label
change if judged now against the new statistics? Those customers are re-classified at once
(their changes carry cause "population:<version>"). For the others the labels stand, but the
new recency cut points may bring the next quintile crossing forward, before the stored review
deadline: that deadline is lowered to it (never raised: a deadline that comes too early only
costs a review that changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import cel

from tierflow_classifier.domain.classify import Outside, variables_at
from tierflow_classifier.domain.features import population_features, window_sums
from tierflow_classifier.domain.memo import once_per_object
from tierflow_classifier.domain.model import CustomerState
from tierflow_classifier.domain.population import POPULATION_FEATURES, population_dimensions
from tierflow_classifier.domain.rules import RuleSet, choose, days, later_than


@once_per_object
def _population_inputs(rules: RuleSet) -> frozenset[str] | None:
    """The names the population dimensions read, if all are population features or params
    (else None: they need the customer's full feature set)."""
    names: set[str] = set()
    for dim in population_dimensions(rules):
        if dim.label_from is not None:
            names.add(dim.label_from)
        for rule in dim.rules:
            names.update(rule.inputs)
    return frozenset(names) if names <= POPULATION_FEATURES | set(rules.params) else None


def outline_suffices(rules: RuleSet) -> bool:
    """Whether `after_refresh` can judge a customer from its outline (monthly buckets, last
    purchase, labels; adapters/population_store.outlines_after) instead of its whole state."""
    return _population_inputs(rules) is not None


def latest_judgement(state: CustomerState) -> datetime | None:
    """A lower bound of the last instant the customer was classified at."""
    instants = [a.since for a in state.dimensions.values()]
    if state.last_purchase_at is not None:
        instants.append(state.last_purchase_at)
    return max(instants) if instants else None


@dataclass(frozen=True)
class Verdict:
    """`reclassify_at`: a population-relative label changes when judged at that instant.
    `review_by`: otherwise, the next recency-quintile crossing under the new statistics, when
    it comes before the stored review deadline (the deadline is lowered to it; nothing else
    changes)."""

    reclassify_at: datetime | None = None
    review_by: datetime | None = None


KEEP = Verdict()


def judge_at(state: CustomerState, at: datetime) -> datetime:
    """The instant to judge `state` at against a population as of `at`: `at`, or the
    customer's own latest instant if it was already judged later (its partition runs ahead of
    the replay watermark), so its history never goes back in time."""
    latest = latest_judgement(state)
    return at if latest is None or latest <= at else latest


def after_refresh(state: CustomerState, rules: RuleSet, outside: Outside, at: datetime) -> Verdict:
    """What `state` needs now that the population `outside.population` is stored and the
    clock reads `at`. Customers without a purchase are never scored."""
    stats = outside.population
    last = state.last_purchase_at
    if stats is None or state.purchases_lifetime == 0 or last is None:
        return KEEP
    when = judge_at(state, at)
    needed = _population_inputs(rules)
    if needed is not None:
        # The population dimensions read only population features and params (the default
        # rule set): evaluate just those, ~20x cheaper than every feature of the customer.
        window = int(rules.params.get("window_months", 12))
        spend, orders, _ = window_sums(state.features.months, when, window)
        features = population_features(state, when, float(spend), orders, stats)
        variables = {
            **rules.params,
            **{k: float(v) if type(v) is int else v for k, v in features.items()},
        }
        context = cel.Context(variables={k: variables[k] for k in needed if k in variables})
    else:
        variables, _, context = variables_at(state, rules, when, outside)
    for dim in population_dimensions(rules):
        current = state.dimensions.get(dim.name)
        if current is None or choose(dim, variables, context)[0] != current.label:
            return Verdict(reclassify_at=when)
    upcoming = later_than(when, [last + days(c) for c in stats.recency_cuts])
    if upcoming is not None and (state.next_review_at is None or upcoming < state.next_review_at):
        return Verdict(review_by=upcoming)
    return KEEP
