"""Named customer features, computed from the state at an instant. Pure.

Rules (CEL expressions) read only these names, so this module is the whole vocabulary of the
rule set; docs/classification.md lists them. Rolling windows are sums over monthly buckets, so
evaluating one is O(window months), never a rescan of history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tierflow_classifier.domain.customer_features import MonthBucket
from tierflow_classifier.domain.model import CustomerState, utc
from tierflow_classifier.domain.population import (
    PopulationStats,
    abc_class,
    quintile,
    score_above,
)

DAY_S = 86_400.0
NEVER = 1e9  # "days since" for something that never happened: beyond every threshold


def month_key(t: datetime) -> str:
    u = utc(t)
    return f"{u.year:04d}-{u.month:02d}"


def month_index(key: str) -> int:
    year, month = key.split("-")
    return int(year) * 12 + int(month) - 1


def month_start(index: int) -> datetime:
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def window_sums(
    months: Mapping[str, MonthBucket], at: datetime, window_months: int
) -> tuple[Decimal, int, int | None]:
    """(spend, orders, oldest contributing month index) over the window ending at `at`.

    The window holds the current calendar month and the `window_months - 1` before it.
    """
    u = utc(at)
    current = u.year * 12 + u.month - 1  # month_index(month_key(at)), without the string
    first = current - window_months + 1
    spend, orders, oldest = Decimal(0), 0, None
    for key, bucket in months.items():
        i = month_index(key)
        if first <= i <= current:
            spend += bucket.spend
            orders += bucket.orders
            if bucket.orders and (oldest is None or i < oldest):
                oldest = i
    return spend, orders, oldest


def _days(now: datetime, then: datetime | None) -> float:
    if then is None:
        return NEVER
    return (now - then).total_seconds() / DAY_S


def _profile(state: CustomerState, name: str) -> Any:
    entry = state.profile.get(name)
    return entry.value if entry else None


def population_features(
    state: CustomerState, at: datetime, spend: float, orders: int, stats: PopulationStats | None
) -> dict[str, Any]:
    """RFM scores (1-5, 0 = not scored) and ABC class, relative to the population."""
    if stats is None or state.purchases_lifetime == 0 or state.last_purchase_at is None:
        return {"rfm_r": 0, "rfm_f": 0, "rfm_m": 0, "rfm_fm": 0.0, "abc_class": ""}
    r = quintile(_days(at, state.last_purchase_at), stats.recency_cuts, lower_is_better=True)
    f = score_above(float(orders), stats.frequency_cuts)
    m = score_above(spend, stats.monetary_cuts)
    return {
        "rfm_r": r,
        "rfm_f": f,
        "rfm_m": m,
        "rfm_fm": (f + m) / 2.0,
        "abc_class": abc_class(spend, stats),
    }


Window = tuple[Decimal, int, int | None]  # what window_sums returns


def compute_features(
    state: CustomerState,
    at: datetime,
    params: Mapping[str, Any],
    population: PopulationStats | None = None,
    *,
    window: Window | None = None,
) -> dict[str, Any]:
    """Every feature the rules may name, as CEL-friendly values (numbers, strings, bools).
    `window`: the state's window_sums at `at`, where the caller has them already."""
    f = state.features
    n = state.purchases_lifetime
    if window is None:
        window = window_sums(f.months, at, int(params.get("window_months", 12)))
    spend_w, orders_w, _ = window
    rhythm_min = int(params.get("rhythm_min_purchases", 3))
    if n >= rhythm_min and state.first_purchase_at and state.last_purchase_at:
        rhythm = (
            (state.last_purchase_at - state.first_purchase_at).total_seconds() / DAY_S / (n - 1)
        )
        rhythm = max(rhythm, float(params.get("rhythm_floor_days", 1.0)))
    else:
        rhythm = float(params.get("default_rhythm_days", 90.0))
    recent = state.recent_purchases
    gap_before_last = (recent[0] - recent[1]).total_seconds() / DAY_S if len(recent) >= 2 else 0.0
    open_since = f.open_since()
    sat_count = f.satisfaction_count
    region = _profile(state, "region") or {}
    return {
        **population_features(state, at, float(spend_w), orders_w, population),
        "purchases_lifetime": n,
        "repeat_purchases": max(n - 1, 0),
        "repeat_rate": (n - 1) / n if n > 1 else 0.0,
        "net_spend_lifetime": float(state.net_spend_lifetime),
        "refunds_lifetime": state.refunds_lifetime,
        "refunded_lifetime": float(state.refunded_lifetime),
        "spend_window": float(spend_w),
        "orders_window": orders_w,
        "days_since_first_purchase": _days(at, state.first_purchase_at),
        "days_since_last_purchase": _days(at, state.last_purchase_at),
        "customer_age_days": max(_days(at, state.first_seen_at), 0.0)
        if state.first_seen_at
        else 0.0,
        "rhythm_days": rhythm,
        "gap_before_last_purchase_days": gap_before_last,
        "discount_share": f.discounted_purchases / n if n else 0.0,
        "support_contacts": f.interactions_of("support_contact", "inquiry"),
        "support_contacts_per_order": f.interactions_of("support_contact", "inquiry", "complaint")
        / max(n, 1),
        "product_interest": f.interactions_of(
            "visit", "message_click", "email_open", "trial_start"
        ),
        "referrals": f.referrals,
        "care_contacts": f.interactions_of("revisit_done"),
        "days_since_contact": _days(at, f.last_contact_at),
        "complaints_total": len(f.complaints),
        "open_complaints": len(open_since),
        "oldest_open_complaint_days": max((_days(at, o) for o in open_since), default=0.0),
        "satisfaction_latest": f.satisfaction_latest or 0,
        "satisfaction_avg": f.satisfaction_sum / sat_count if sat_count else 0.0,
        "country": str(region.get("country") or ""),
        "province": str(region.get("province") or ""),
        "city": str(region.get("city") or ""),
        "industry": str(_profile(state, "industry") or ""),
        "company_size": str(_profile(state, "company_size") or ""),
    }


def oldest_open_complaint(state: CustomerState) -> datetime | None:
    return min(state.features.open_since(), default=None)
