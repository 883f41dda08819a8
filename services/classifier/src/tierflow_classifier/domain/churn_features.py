"""The churn-risk features of one customer, from its sufficient statistics. Pure.

Classification needs only the probability and level (BG/NBD P(no purchase in the horizon) plus
the service-signal terms, ~50 µs); the full score with CLV and value at risk (~300 µs, several
hypergeometric terms) is computed on demand for the read API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from tierflow_classifier.domain.churn import (
    ChurnConfig,
    ChurnLevels,
    ChurnScore,
    CustomerStats,
    FittedModel,
    ServiceSignals,
    bgnbd,
    score_customer,
)
from tierflow_classifier.domain.churn.history import DECLINE_WINDOW_DAYS
from tierflow_classifier.domain.churn.score import LOGIT_EPS, ChurnWeights, sigmoid
from tierflow_classifier.domain.model import CustomerState
from tierflow_classifier.domain.purchase_days import days_of, instant_day

DAY_S = 86_400.0
UNSCORED: dict[str, Any] = {
    "churn_probability": 0.0,
    "churn_level": "",
    "churn_model_no_purchase": 0.0,
}


def churn_config(params: Mapping[str, Any]) -> ChurnConfig:
    return ChurnConfig(
        horizon_days=float(params.get("churn_horizon_days", 90.0)),
        levels=ChurnLevels(
            medium=float(params.get("churn_medium", 0.3)),
            high=float(params.get("churn_high", 0.6)),
            critical=float(params.get("churn_critical", 0.85)),
        ),
    )


def _inputs(state: CustomerState, at: datetime) -> tuple[CustomerStats, ServiceSignals] | None:
    first, last, n = state.first_purchase_at, state.last_purchase_at, state.purchases_lifetime
    if n == 0 or first is None or last is None:
        return None
    age = max((at - first).total_seconds() / DAY_S, 0.0)
    recency = min(max((last - first).total_seconds() / DAY_S, 0.0), age) if n > 1 else 0.0
    spend = float(state.net_spend_lifetime)
    f = state.features
    sat = f.satisfaction_latest or 0
    x, mean_spend = n - 1, spend / n if n > 1 and spend > 0 else None
    decline: float | None = None
    days = days_of(f.purchase_days)
    if days is not None:
        # The fit's preparation (domain/churn/history.py): same-day orders are one purchase,
        # the mean spend is over repeat purchase days, the decline over the last 13 weeks.
        x = len(days) - 1
        recency = recency if x > 0 else 0.0
        repeat_spend = math.fsum(v for _, v in days[1:])
        mean_spend = repeat_spend / x if x > 0 and repeat_spend > 0 else None
        decline = _decline(days, instant_day(at))
    stats = CustomerStats(
        x=x,
        t_x_days=recency,
        T_days=age,
        mean_spend=mean_spend,
        total_spend=spend,
    )
    signals = ServiceSignals(
        open_complaints=f.open_complaints,
        satisfaction=(sat - 1) / 4.0 if sat else None,  # CSAT 1-5 onto 0-1
        frequency_decline=decline,
    )
    return stats, signals


def _decline(days: Sequence[tuple[float, float]], now: float) -> float:
    """history.decline_at for one customer: 1 - recent rate / earlier rate, clipped."""
    start = now - DECLINE_WINDOW_DAYS
    seen = [d for d, _ in days if d <= now]
    if len(seen) < 2:
        return 0.0
    recent = sum(1 for d in seen if d > start)
    earlier = max(len(seen) - 1 - recent, 0)
    earlier_days = start - seen[0]
    if earlier <= 0 or earlier_days <= 0:
        return 0.0
    return min(max(1.0 - (recent * earlier_days) / (earlier * DECLINE_WINDOW_DAYS), 0.0), 1.0)


def churn_features(
    state: CustomerState, at: datetime, model: FittedModel | None, config: ChurnConfig
) -> dict[str, Any]:
    """churn_probability (no purchase in the horizon), churn_level ('' = not scored)."""
    if model is None:
        return dict(UNSCORED)
    inputs = _inputs(state, at)
    if inputs is None:
        return dict(UNSCORED)
    stats, signals = inputs
    quiet, probability = _score(model, config, stats, signals, stats.T_days)
    if not math.isfinite(probability):
        return dict(UNSCORED)
    return {
        "churn_probability": probability,
        "churn_level": config.levels.level(probability),
        "churn_model_no_purchase": quiet,
    }


def _score(
    model: FittedModel,
    config: ChurnConfig,
    stats: CustomerStats,
    signals: ServiceSignals,
    age_days: float,
) -> tuple[float, float]:
    """(P(no purchase in the horizon), P(churn)) of a customer aged `age_days`."""
    unit = model.time_unit_days
    quiet = p_no_purchase_one(
        model.purchase,
        config.horizon_days / unit,
        float(stats.x),
        stats.t_x_days / unit,
        age_days / unit,
    )
    z = combined_logit(
        quiet,
        stats.total_spend,
        signals.open_complaints,
        signals.satisfaction,
        config,
        weights=model.weights,
        decline=signals.frequency_decline,
    )
    return quiet, model.probability(z)


_MINUTE_DAYS = 1.0 / 1440.0


def next_churn_crossing(
    state: CustomerState,
    at: datetime,
    model: FittedModel,
    config: ChurnConfig,
    thresholds: Sequence[float],
    *,
    before: datetime | None = None,
    within_days: float = 3_650.0,
) -> datetime | None:
    """The first instant after `at` at which the churn probability exceeds the lowest of
    `thresholds` at or above its value now, if the customer buys nothing until then. None if
    that is not before `before` (the customer has an earlier deadline, at which this is
    asked again: one evaluation instead of a search) or more than `within_days` away.

    While a customer is quiet only its age grows, and P(churn) rises with age (the chance it
    is still alive falls and so does the chance of a purchase in the horizon): the instant is
    found by bisection, to the minute, a little after the crossing so the rules see it."""
    inputs = _inputs(state, at)
    if inputs is None:
        return None
    stats, signals = inputs
    now_days = stats.T_days
    _, p_now = _score(model, config, stats, signals, now_days)
    if not math.isfinite(p_now):
        return None
    above = [t for t in thresholds if t >= p_now]
    if not above:
        return None
    target = min(above)

    def crossed(age_days: float) -> bool:
        return _score(model, config, stats, signals, age_days)[1] > target

    lo = now_days
    if before is not None:
        hi = now_days + (before - at).total_seconds() / DAY_S
        if hi <= lo or not crossed(hi):
            return None
    else:
        step = 7.0
        hi = now_days + step
        while not crossed(hi):
            if step > within_days:
                return None
            lo, step = hi, step * 2.0
            hi = now_days + step
    while hi - lo > _MINUTE_DAYS:
        mid = (lo + hi) / 2.0
        if crossed(mid):
            hi = mid
        else:
            lo = mid
    return at + timedelta(days=hi - now_days + _MINUTE_DAYS)


# One customer at a time, with `math` instead of numpy: the classifier scores on every
# evaluation, where numpy's per-call overhead on scalars was most of the cost (a third of a
# replay's CPU). The vectorised functions (bgnbd.p_no_purchase, score.churn_terms) stay the
# reference used by fitting, validation and the read API; tests/unit/test_churn_model.py holds
# the two together.


def p_no_purchase_one(params: bgnbd.BgNbdParams, t: float, x: float, t_x: float, T: float) -> float:
    """bgnbd.p_no_purchase for one customer."""
    r, alpha, a, b, k = params.r, params.alpha, params.a, params.b, params.k
    if x + k > 0:
        odds = math.log(a) - math.log(b + x + k - 1.0)
        odds += (r + x) * (math.log(alpha + T) - math.log(alpha + t_x))
        alive = sigmoid(-odds)
    else:
        alive = 1.0  # no dropout possible before a first repeat purchase
    quiet = math.exp((r + x) * (math.log(alpha + T) - math.log(alpha + T + t)))
    return 1.0 - alive * (1.0 - quiet)


def combined_logit(
    quiet: float,
    total_spend: float | None,
    open_complaints: int,
    satisfaction: float | None,
    config: ChurnConfig,
    *,
    weights: ChurnWeights | None = None,
    decline: float | None = None,
) -> float:
    """score.combine(score.churn_terms(...)) for one customer, by the model's own weights
    (`weights`) where it has them, else the config's priors."""
    w = weights or config.weights
    return w.intercept + math.fsum(
        (
            w.model * _logit(quiet),
            w.spend * _spend_term(total_spend),
            w.open_complaints * math.log1p(open_complaints),
            w.low_satisfaction * _shortfall(satisfaction, config.satisfaction_floor),
            w.frequency_decline * (0.0 if decline is None else min(max(decline, 0.0), 1.0)),
        )
    )


def _logit(p: float) -> float:
    q = min(max(p, LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(q) - math.log1p(-q)


def _spend_term(total_spend: float | None) -> float:
    # Refunds can make net spend negative; that is no engagement, not negative engagement.
    if total_spend is None or math.isnan(total_spend):
        return 0.0
    return math.log1p(max(total_spend, 0.0))


def _shortfall(satisfaction: float | None, floor: float) -> float:
    if satisfaction is None or math.isnan(satisfaction):
        return 0.0
    return min(max((floor - satisfaction) / floor, 0.0), 1.0)


def full_score(
    state: CustomerState, at: datetime, model: FittedModel, config: ChurnConfig
) -> ChurnScore | None:
    """Probability, P(alive), expected purchases, CLV, value at risk and the explanation."""
    inputs = _inputs(state, at)
    if inputs is None:
        return None
    with np.errstate(all="ignore"):
        return score_customer(model, inputs[0], inputs[1], config)
