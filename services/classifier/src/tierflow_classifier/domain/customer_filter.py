"""The customer search's filter: parsed from query parameters into typed bounds, or the list of
parameters that are wrong and why (the API answers those as one 422 problem). Pure.

Labels are `dimension:label`; several labels of one dimension are alternatives (OR), labels
of different dimensions must all hold (AND). Ranges are inclusive; a date (no time) as an upper
bound of the last purchase means the whole of that day (UTC).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TypeVar

T = TypeVar("T")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class FieldProblem:
    field: str
    reason: str


@dataclass(frozen=True)
class CustomerFilter:
    """What a customer must satisfy; None bounds are open. `last_purchase_before` is
    exclusive, every other bound inclusive. Either churn bound leaves unscored customers out."""

    prefix: str | None = None
    labels: Mapping[str, frozenset[str]] = field(default_factory=dict)
    spend_min: Decimal | None = None
    spend_max: Decimal | None = None
    orders_min: int | None = None
    orders_max: int | None = None
    last_purchase_from: datetime | None = None
    last_purchase_before: datetime | None = None
    churn_min: float | None = None
    churn_max: float | None = None


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    after: str | None = None


Params = Mapping[str, Sequence[str]]


def _one(params: Params, name: str) -> str | None:
    values = params.get(name) or ()
    return values[-1] if values else None


def _decimal(text: str) -> Decimal:
    value = Decimal(text.strip())
    if not value.is_finite():
        raise InvalidOperation
    return value


def _instant(text: str, *, upper: bool) -> datetime:
    """An ISO datetime (no offset: UTC) or date; for an upper bound a date is its whole day,
    and the result is exclusive."""
    raw = text.strip()
    if len(raw) == 10:
        day = date.fromisoformat(raw)
        start = datetime.combine(day, time(), tzinfo=UTC)
        return start + timedelta(days=1) if upper else start
    t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t + _TICK if upper else t


def _probability(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def parse_filter(
    params: Params, dimensions: Mapping[str, frozenset[str] | None]
) -> CustomerFilter | list[FieldProblem]:
    """`dimensions`: the rule set's dimensions and their labels (None: any label)."""
    problems: list[FieldProblem] = []
    labels: dict[str, set[str]] = {}
    for item in params.get("label") or ():
        dimension, sep, label = item.partition(":")
        if not sep or not dimension or not label:
            problems.append(FieldProblem("label", f"{item!r} is not dimension:label"))
        elif dimension not in dimensions:
            known = ", ".join(sorted(dimensions))
            problems.append(FieldProblem("label", f"unknown dimension {dimension!r} ({known})"))
        elif (allowed := dimensions[dimension]) is not None and label not in allowed:
            problems.append(FieldProblem("label", f"{label!r} is not a label of {dimension}"))
        else:
            labels.setdefault(dimension, set()).add(label)

    def read(name: str, parse: Callable[[str], T], what: str) -> T | None:
        text = _one(params, name)
        if text is None or text == "":
            return None
        try:
            return parse(text)
        except (ValueError, InvalidOperation, ArithmeticError):
            problems.append(FieldProblem(name, f"{text!r} is not {what}"))
            return None

    spend_min = read("spend_min", _decimal, "a decimal number")
    spend_max = read("spend_max", _decimal, "a decimal number")
    orders_min = read("orders_min", int, "an integer")
    orders_max = read("orders_max", int, "an integer")
    since = read("last_purchase_from", lambda t: _instant(t, upper=False), "an ISO date or time")
    before = read("last_purchase_to", lambda t: _instant(t, upper=True), "an ISO date or time")
    churn_min = read("churn_min", _probability, "a probability between 0 and 1")
    churn_max = read("churn_max", _probability, "a probability between 0 and 1")
    bounds: list[tuple[Decimal | float | None, Decimal | float | None, str]] = [
        (spend_min, spend_max, "spend_max"),
        (orders_min, orders_max, "orders_max"),
        (churn_min, churn_max, "churn_max"),
    ]
    for low, high, name in bounds:
        if low is not None and high is not None and high < low:
            problems.append(FieldProblem(name, f"{high} is below the minimum {low}"))
    if since is not None and before is not None and before <= since:
        problems.append(FieldProblem("last_purchase_to", "is before last_purchase_from"))
    if problems:
        return problems
    prefix = _one(params, "q")
    return CustomerFilter(
        prefix=prefix or None,
        labels={d: frozenset(v) for d, v in sorted(labels.items())},
        spend_min=spend_min,
        spend_max=spend_max,
        orders_min=orders_min,
        orders_max=orders_max,
        last_purchase_from=since,
        last_purchase_before=before,
        churn_min=churn_min,
        churn_max=churn_max,
    )


def parse_page(params: Params) -> Page | list[FieldProblem]:
    text = _one(params, "limit")
    limit = DEFAULT_LIMIT
    if text is not None:
        try:
            limit = int(text)
        except ValueError:
            return [FieldProblem("limit", f"{text!r} is not an integer")]
        if not 1 <= limit <= MAX_LIMIT:
            return [FieldProblem("limit", f"must be between 1 and {MAX_LIMIT}")]
    return Page(limit=limit, after=_one(params, "after") or None)
