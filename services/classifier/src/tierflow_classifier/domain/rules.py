"""The rule set as pure values: dimensions of ordered CEL rules, timers, hysteresis, currencies.

A rule is `label` + `when` (a CEL expression over features, params and timers). The first rule
of a dimension that is true gives its label; none true gives the default. CEL (the
common-expression-language package: Google's CEL in Rust) is safe by construction — no I/O, no
loops, no eval — and fast enough to run per event (~2 µs an expression).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import cel

from tierflow_classifier.domain.memo import once_per_object

Program = Any  # cel.Program: compiled, immutable, thread-safe
Fast = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Rule:
    label: str
    when: str
    program: Program
    inputs: tuple[str, ...]
    # The same expression as a Python function over the variables (domain/fastrules.py), when
    # it is in the simple subset; None: evaluate the CEL program.
    fast: Fast | None = None


@dataclass(frozen=True)
class Hysteresis:
    """A downgrade needs the current rule to fail even with every numeric param eased by `band`,
    and waits until the customer has held the label `min_dwell_days`. Upgrades apply at once."""

    band: float = 0.0
    min_dwell_days: float = 0.0


@dataclass(frozen=True)
class Dimension:
    name: str
    rules: tuple[Rule, ...]
    default: str
    label_from: str | None = None  # label = this feature's value (industry, company size)
    hysteresis: Hysteresis | None = None
    # Every rule's fast path in one function: the index of the first rule that holds, or
    # DEFAULT (domain/fastrules.compile_first_match); None: rule by rule.
    first_match: Fast | None = None

    def rank(self, label: str) -> int:
        for i, rule in enumerate(self.rules):
            if rule.label == label:
                return i
        return len(self.rules)


ANCHORS = (
    "first_purchase_at",
    "last_purchase_at",
    "first_seen_at",
    "oldest_open_complaint_at",
    "last_contact_at",  # the last completed care revisit / follow-up (revisit_done)
)


@dataclass(frozen=True)
class Timer:
    """`name` turns true `days` (a CEL expression) after `anchor`; that instant is a deadline at
    which the customer is re-evaluated even if no event arrives."""

    name: str
    anchor: str
    days: str
    program: Program
    fast: Fast | None = None


@dataclass(frozen=True)
class RefundPolicy:
    """Which refunds are impossible, hence dead-lettered instead of applied.

    `unknown_order`: a refund naming an order this customer never placed. Accepting is the
    default because events are applied by event time in any order: a refund may be read before
    its purchase. `over_refund`: refunds of a known order adding up to more than it cost.
    """

    unknown_order: str = "accept"  # or "dead_letter"
    over_refund: str = "dead_letter"  # or "accept"


@dataclass(frozen=True)
class RuleSet:
    # The id of the rule set's content (domain/rule_versions.py), what customers record.
    version: str
    base_currency: str
    rates: Mapping[str, Decimal]
    params: Mapping[str, Any]
    dimensions: tuple[Dimension, ...]
    timers: tuple[Timer, ...] = ()
    window_months: int = 12
    # Every name a rule or timer reads: only these go into the CEL context.
    needed: frozenset[str] = frozenset()
    refunds: RefundPolicy = field(default_factory=RefundPolicy)
    # The document's own name for itself (`rule_set_version:` in the YAML), for people.
    label: str = ""


@dataclass(frozen=True)
class Decision:
    label: str
    rule: str
    reason: str
    explanation: Mapping[str, Any]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def _explain(rule: Rule, variables: Mapping[str, Any]) -> dict[str, Any]:
    return {name: variables.get(name) for name in rule.inputs}


LABEL_FROM = -2  # choose(): the label is a feature's value (label_from dimensions)
DEFAULT = -1  # choose(): no rule matched

# The reason of a dimension's default decision (its rule: default_rule()).
NO_RULE_MATCHED = "no rule matched"


def default_rule(dimension: str) -> str:
    """The rule name of a dimension's default decision."""
    return f"{dimension}.default"


class LazyContext:
    """The cel.Context of a variables mapping, built on first use: when every rule has a fast
    closure it is never built (converting the variables is most of CEL's cost)."""

    def __init__(self, variables: Mapping[str, Any], needed: frozenset[str]) -> None:
        self._variables = variables
        self._needed = needed
        self._context: Any = None

    def get(self) -> Any:
        if self._context is None:
            self._context = cel.Context(
                variables={k: v for k, v in self._variables.items() if k in self._needed}
            )
        return self._context

    def set(self, name: str, value: Any) -> None:
        """A variable added to the mapping after creation (a timer flag)."""
        if self._context is not None:
            self._context.add_variable(name, value)


def _true(rule: Rule, variables: Mapping[str, Any], context: Any) -> bool:
    if rule.fast is not None:
        return rule.fast(variables) is True
    cel_context = context.get() if isinstance(context, LazyContext) else context
    return rule.program.execute(cel_context) is True


def choose(dimension: Dimension, variables: Mapping[str, Any], context: Any) -> tuple[str, int]:
    """The label and which rule gave it (an index, DEFAULT or LABEL_FROM), without building the
    explanation: most evaluations keep the current label, and explain() is only needed on a
    change. `context`: a cel.Context (or LazyContext) with the same variables, for rules
    without a fast closure."""
    if dimension.label_from is not None:
        value = str(variables.get(dimension.label_from) or "")
        return value or dimension.default, LABEL_FROM
    first = dimension.first_match
    if first is not None:
        i = first(variables)
        return (dimension.rules[i].label, i) if i >= 0 else (dimension.default, DEFAULT)
    for i, rule in enumerate(dimension.rules):
        if _true(rule, variables, context):
            return rule.label, i
    return dimension.default, DEFAULT


def explain(dimension: Dimension, index: int, variables: Mapping[str, Any]) -> Decision:
    """The Decision for what choose() picked: rule, reason and the inputs with their values."""
    if index == LABEL_FROM:
        assert dimension.label_from is not None
        value = str(variables.get(dimension.label_from) or "")
        return Decision(
            value or dimension.default,
            f"{dimension.name}.label_from",
            f"{dimension.label_from} = {value!r}" if value else f"{dimension.label_from} unknown",
            {"inputs": {dimension.label_from: value}},
        )
    if index == DEFAULT:
        return _default_decision(dimension)
    rule = dimension.rules[index]
    inputs = _explain(rule, variables)
    return Decision(
        rule.label,
        f"{dimension.name}.rules[{index}]",
        rule_reason(rule.when, inputs),
        {"expression": rule.when, "inputs": inputs},
    )


def rule_reason(expression: str, inputs: Mapping[str, Any]) -> str:
    """The reason of a matched rule: its expression and the inputs it read, with their values
    (what its explanation holds, so the stored state can leave the reason out)."""
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in inputs.items())
    return f"{expression}  [{shown}]"


@once_per_object
def _default_decision(dimension: Dimension) -> Decision:
    """A dimension's "no rule matched" decision depends on nothing but the dimension: built
    once (every new customer takes it on most dimensions)."""
    return Decision(
        dimension.default,
        default_rule(dimension.name),
        NO_RULE_MATCHED,
        # Shared by every assignment that takes it; nothing mutates an explanation.
        {"evaluated": [r.when for r in dimension.rules]},
    )


def decide(dimension: Dimension, variables: Mapping[str, Any], context: Any) -> Decision:
    """First true rule wins; the explanation lists every input the rule read, with its value.

    `context` is a cel.Context with the same variables (built once per customer evaluation).
    """
    _, index = choose(dimension, variables, context)
    return explain(dimension, index, variables)


def holds(rule: Rule, variables: Mapping[str, Any]) -> bool:
    # Only for hysteresis checks on a would-be downgrade: rare, so a fresh context is fine.
    if rule.fast is not None:
        return rule.fast(variables) is True
    return rule.program.execute({k: variables[k] for k in rule.inputs if k in variables}) is True


def scaled(params: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """Every numeric param times `factor` (booleans and strings untouched)."""
    return {k: (v * factor if isinstance(v, float) else v) for k, v in params.items()}


def days(value: float) -> timedelta:
    return timedelta(seconds=value * 86_400.0)


def later_than(at: datetime, candidates: list[datetime | None]) -> datetime | None:
    future = [c for c in candidates if c is not None and c > at]
    return min(future) if future else None
