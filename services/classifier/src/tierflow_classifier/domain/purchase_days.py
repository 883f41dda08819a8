"""The dated history the churn model needs, kept in a customer's features. Pure.

``purchase_days`` (a field of domain/customer_features.py) maps each UTC day with a purchase
to the day's spend (base currency, orders of that day summed: same-day orders are one
purchase, as in Fader-Hardie's CDNOW preparation and the validation); ``satisfaction_log``
maps each answer (time and cause, so two answers at one instant stay two) to its score.
Both are merges of facts (a sum per day, a set of answers), so any delivery order gives the
same state, and together with the complaints' opened/resolved times they let the churn fit
see every customer as of any past cut-off (domain/churn/history).

A state written before these existed has neither: it scores from its lifetime counters as it
always did, and the fit uses its aggregates for the purchase model only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal

_EPOCH = date(1970, 1, 1).toordinal()
DAY_S = 86_400.0


def day_key(t: datetime) -> str:
    return t.astimezone(UTC).date().isoformat()


def day_number(key: str) -> float:
    """Days since 1970-01-01 of a ``day_key``: the axis the churn fit works on."""
    return float(date.fromisoformat(key).toordinal() - _EPOCH)


def instant_day(t: datetime) -> float:
    return t.timestamp() / DAY_S


def with_purchase(days: Mapping[str, Decimal], t: datetime, amount: Decimal) -> dict[str, Decimal]:
    out = dict(days)
    key = day_key(t)
    out[key] = out.get(key, Decimal(0)) + amount
    return out


def with_satisfaction(
    log: Mapping[str, int], t: datetime, cause: str, score: int
) -> dict[str, int]:
    out = dict(log)
    out[f"{t.astimezone(UTC).isoformat()}|{cause}"] = score
    return out


def satisfaction_entries(log: Mapping[str, int]) -> list[tuple[float, float]]:
    """(day number, satisfaction 0..1) per answer; CSAT 1-5 onto 0-1 as the scorer does."""
    out = []
    for key, score in log.items():
        instant = datetime.fromisoformat(key.split("|", 1)[0])
        out.append((instant_day(instant), (float(score) - 1.0) / 4.0))
    return out


def days_of(days: Mapping[str, Decimal]) -> list[tuple[float, float]] | None:
    """(day number, spend) per purchase day, oldest first; None for a state without them."""
    if not days:
        return None
    return sorted((day_number(k), float(v)) for k, v in days.items())
