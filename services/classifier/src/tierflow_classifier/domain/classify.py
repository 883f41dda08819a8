"""Evaluate every dimension of a customer at an instant: labels, explanations, changes, and the
next instant at which time alone could change a label (the customer's review deadline). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tierflow_classifier.domain.churn import FittedModel
from tierflow_classifier.domain.churn.score import ChurnConfig
from tierflow_classifier.domain.churn_features import (
    churn_config,
    churn_features,
    next_churn_crossing,
)
from tierflow_classifier.domain.fastrules import compared_with
from tierflow_classifier.domain.features import (
    compute_features,
    month_start,
    oldest_open_complaint,
    window_sums,
)
from tierflow_classifier.domain.memo import once_per_object
from tierflow_classifier.domain.model import (
    Assignment,
    Change,
    CustomerState,
    assemble,
    evolve,
)
from tierflow_classifier.domain.overrides import hold_of
from tierflow_classifier.domain.population import PopulationStats
from tierflow_classifier.domain.rules import (
    Dimension,
    LazyContext,
    RuleSet,
    choose,
    days,
    explain,
    holds,
    later_than,
    scaled,
)


def _anchor(state: CustomerState, name: str) -> datetime | None:
    if name == "oldest_open_complaint_at":
        return oldest_open_complaint(state)
    if name == "last_contact_at":
        return state.features.last_contact_at
    value: datetime | None = getattr(state, name)
    return value


@dataclass(frozen=True)
class Outside:
    """What classes are relative to besides the customer: population statistics (RFM, ABC)
    and the fitted churn model. Both change rarely and are versioned."""

    population: PopulationStats | None = None
    churn: FittedModel | None = None


NOTHING = Outside()


def effective_version(rules: RuleSet, outside: Outside) -> str:
    """Classes depend on the rule set and the churn model: a new version of either re-evaluates
    every customer. A new population only re-evaluates the customers whose population-relative
    labels it changes (adapters/population_store.py), so it is not part of this version."""
    return compose_version(rules.version, outside.churn.version if outside.churn else None)


def compose_version(rules_version: str, churn_version: str | None) -> str:
    """The effective version from its parts (what `rule_set_version` columns hold)."""
    return rules_version if churn_version is None else f"{rules_version}+{churn_version}"


def labelled_version(version: str, outside: Outside) -> str:
    """What an assignment records: the effective version plus the population it was judged by."""
    if outside.population is None:
        return version
    return f"{version}+pop{outside.population.version}"


def variables_at(
    state: CustomerState, rules: RuleSet, at: datetime, outside: Outside = NOTHING
) -> tuple[dict[str, Any], list[datetime | None], Any]:
    """Params + features + timer flags, the deadlines those timers imply, and a CEL context
    holding the variables the rules read."""
    variables, deadlines, lazy = _variables(state, rules, at, outside)
    return variables, deadlines, lazy.get()


@once_per_object
def rule_set_churn_config(rules: RuleSet) -> ChurnConfig:
    """churn_config of the rule set's params (a handful of rule sets per process)."""
    return churn_config(rules.params)


_CHURN_FEATURES = ("churn_probability", "churn_level", "churn_model_no_purchase")


@once_per_object
def _churn_thresholds(rules: RuleSet) -> tuple[float, ...] | None:
    """The values the rule set compares the churn probability with (the churn levels' bounds
    too, where a rule reads the level), when that is all it does with the churn features:
    then labels move with time only when the probability crosses one of them. None when a
    rule or timer uses them otherwise (arithmetic, another feature, the model's own term)."""
    found: set[float] = set()
    levels = rule_set_churn_config(rules).levels
    for source, inputs in [
        *((r.when, r.inputs) for d in rules.dimensions for r in d.rules),
        *((t.days, _names(t.days)) for t in rules.timers),
    ]:
        if "churn_model_no_purchase" in inputs:
            return None
        if "churn_level" in inputs:
            found |= {levels.medium, levels.high, levels.critical}
        if "churn_probability" not in inputs:
            continue
        operands = compared_with(source, "churn_probability")
        if operands is None:
            return None
        for operand in operands:
            value = _number(operand, rules.params)
            if value is None:
                return None
            found.add(value)
    return tuple(sorted(found))


def _names(source: str) -> tuple[str, ...]:
    return tuple(n for n in _CHURN_FEATURES if n in source)


def _number(operand: str, params: Mapping[str, Any]) -> float | None:
    if operand[0].isdigit():
        return float(operand)
    value = params.get(operand)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _variables(
    state: CustomerState, rules: RuleSet, at: datetime, outside: Outside = NOTHING
) -> tuple[dict[str, Any], list[datetime | None], LazyContext]:
    """variables_at() with the CEL context built only if a rule without a fast closure needs
    it (building it converts every variable: CEL's main cost)."""
    params = rules.params
    population = outside.population
    # Once: the features read the window's sums, the deadlines its oldest month.
    window = window_sums(state.features.months, at, rules.window_months)
    features = compute_features(state, at, params, population, window=window)
    features.update(churn_features(state, at, outside.churn, rule_set_churn_config(rules)))
    # CEL never coerces int and double: every number a rule sees is a double.
    variables: dict[str, Any] = {
        **params,
        **{k: float(v) if type(v) is int else v for k, v in features.items()},
    }
    deadlines: list[datetime | None] = []
    context = LazyContext(variables, rules.needed | {t.name for t in rules.timers})
    for timer in rules.timers:
        anchor = _anchor(state, timer.anchor)
        if anchor is None:
            variables[timer.name] = False
        else:
            fast = timer.fast
            value = fast(variables) if fast is not None else timer.program.execute(context.get())
            due = anchor + days(float(value))
            variables[timer.name] = at >= due
            deadlines.append(due)
        context.set(timer.name, variables[timer.name])
    oldest = window[2]
    if oldest is not None:
        # The oldest month in the rolling window drops out then, changing the window sums.
        deadlines.append(month_start(oldest + rules.window_months))
    if population is not None and state.last_purchase_at is not None:
        # Recency crosses a quintile boundary then, changing the R score.
        deadlines.extend(state.last_purchase_at + days(c) for c in population.recency_cuts)
    if outside.churn is not None and state.purchases_lifetime > 0:
        # Risk rises while a customer stays quiet. Where the rules only compare it with
        # thresholds, re-score exactly when it crosses the next one; else at a steady cadence.
        thresholds = _churn_thresholds(rules)
        if thresholds is None:
            deadlines.append(at + days(float(params.get("churn_review_days", 1.0))))
        else:
            deadlines.append(
                next_churn_crossing(
                    state,
                    at,
                    outside.churn,
                    rule_set_churn_config(rules),
                    thresholds,
                    before=later_than(at, deadlines),
                )
            )
    return variables, deadlines, context


def _hysteresis_keeps(
    dim: Dimension,
    label: str,
    current: Assignment | None,
    variables: dict[str, Any],
    rules: RuleSet,
    at: datetime,
    deadlines: list[datetime | None],
) -> bool:
    """Whether hysteresis keeps the current label although the rules now give `label`."""
    h = dim.hysteresis
    if h is None or current is None or current.label == label:
        return False
    current_rank, new_rank = dim.rank(current.label), dim.rank(label)
    if new_rank <= current_rank:
        return False  # upgrades (and moves between unranked labels) apply at once
    # Downgrades wait out the minimum dwell in the current label ...
    dwell_end = current.since + days(h.min_dwell_days)
    if at < dwell_end:
        deadlines.append(dwell_end)
        return True
    if current_rank < len(dim.rules):
        # ... and the current rule must fail even with thresholds eased by the band.
        eased = {**variables, **scaled(rules.params, 1.0 - h.band)}
        if holds(dim.rules[current_rank], eased):
            return True
    return False


# The value tier's first assignment is always a change: it is the contract downstream
# services subscribe to (customer-tier-changed), and a first purchase must announce a tier.
ALWAYS_ANNOUNCED = frozenset({"value_tier"})


def silent_first(dim: Dimension, label: str) -> bool:
    """A dimension's first assignment to its default label (`unknown`, `unscored`, `none`, ...)
    says only "nothing known yet": it is part of the state (the API shows it, with its
    explanation) but it is not a change, so it is neither stored in the history nor published."""
    return label == dim.default and dim.name not in ALWAYS_ANNOUNCED


def classify(
    state: CustomerState,
    rules: RuleSet,
    *,
    at: datetime,
    cause: str,
    outside: Outside = NOTHING,
    redefined: frozenset[str] = frozenset(),
) -> tuple[CustomerState, list[Change]]:
    """`redefined`: dimensions a newly activated rule set defines otherwise than the one the
    customer was judged by. Their new rules decide at once: hysteresis damps a customer's own
    small moves, not an operator's decision to move a bar (docs/classification.md)."""
    variables, deadlines, context = _variables(state, rules, at, outside)
    version = effective_version(rules, outside)
    labelled = labelled_version(version, outside)
    dimensions = dict(state.dimensions)
    changes: list[Change] = []
    for dim in rules.dimensions:
        current = dimensions.get(dim.name)
        hold = hold_of(current)
        if hold is not None and hold.holds_at(at):
            # Overridden: the rules wait until the override expires (a review deadline).
            deadlines.append(hold.expires_at)
            continue
        label, index = choose(dim, variables, context)
        if (
            hold is None
            and current is not None
            and (
                current.label == label
                or (
                    dim.name not in redefined
                    and _hysteresis_keeps(dim, label, current, variables, rules, at, deadlines)
                )
            )
        ):
            continue
        decision = explain(dim, index, variables)
        assignment = assemble(
            Assignment,
            label=decision.label,
            since=at,
            rule=decision.rule,
            reason=decision.reason,
            explanation=decision.explanation,
            rule_set_version=labelled,
        )
        dimensions[dim.name] = assignment
        if current is None and silent_first(dim, decision.label):
            continue
        if hold is not None and current is not None and current.label == decision.label:
            continue  # the override ended where the rules stand: same label, no change
        changes.append(
            assemble(
                Change,
                customer_id=state.customer_id,
                dimension=dim.name,
                from_label=current.label if current else None,
                to=assignment,
                cause=hold.released_cause if hold is not None else cause,
                effective_at=at,
            )
        )
    return (
        evolve(
            state,
            dimensions=dimensions,
            next_review_at=later_than(at, deadlines),
            rule_set_version=version,
            churn_probability=variables["churn_probability"] if variables["churn_level"] else None,
        ),
        changes,
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def catch_up(
    state: CustomerState,
    rules: RuleSet,
    *,
    until: datetime,
    outside: Outside = NOTHING,
) -> tuple[CustomerState, list[Change]]:
    """Fire every review deadline up to `until`, each at its own instant (cause "time:<t>"), so
    transitions carry the time they happened, however late they are computed."""
    changes: list[Change] = []
    for _ in range(10_000):  # deadlines strictly increase; the bound only guards a bad rule set
        due = state.next_review_at
        if due is None or due > until:
            break
        state, fired = classify(
            state, rules, at=due, cause=f"time:{due.isoformat()}", outside=outside
        )
        changes.extend(fired)
    return state, changes
