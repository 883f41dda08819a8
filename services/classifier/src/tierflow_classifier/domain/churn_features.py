"""The churn-risk features of one customer, from its sufficient statistics. Pure.

Classification needs only the probability and level (BG/NBD P(no purchase in the horizon) plus
the service-signal terms, ~50 µs); the full score with CLV and value at risk (~300 µs, several
hypergeometric terms) is computed on demand for the read API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
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
from tierflow_classifier.domain.churn.score import TERMS, churn_terms
from tierflow_classifier.domain.model import CustomerState

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
    sat = int(f.get("satisfaction_latest", 0))
    stats = CustomerStats(
        x=n - 1,
        t_x_days=recency,
        T_days=age,
        mean_spend=spend / n if n > 1 and spend > 0 else None,
        total_spend=spend,
    )
    signals = ServiceSignals(
        open_complaints=int(f.get("open_complaints", 0)),
        satisfaction=(sat - 1) / 4.0 if sat else None,  # CSAT 1-5 onto 0-1
    )
    return stats, signals


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
    unit = model.time_unit_days
    with np.errstate(all="ignore"):
        quiet = float(
            bgnbd.p_no_purchase(
                model.purchase,
                config.horizon_days / unit,
                float(stats.x),
                stats.t_x_days / unit,
                stats.T_days / unit,
            )
        )
        terms = churn_terms(
            quiet,
            total_spend=stats.total_spend if stats.total_spend is not None else math.nan,
            open_complaints=signals.open_complaints,
            satisfaction=signals.satisfaction if signals.satisfaction is not None else math.nan,
            decline=math.nan,
            satisfaction_floor=config.satisfaction_floor,
        )
    weights = config.weights
    z = weights.intercept + math.fsum(weights.of(t) * float(terms[t]) for t in TERMS)
    probability = 1.0 / (1.0 + math.exp(-z)) if z >= -700 else 0.0
    if not math.isfinite(probability):
        return dict(UNSCORED)
    return {
        "churn_probability": probability,
        "churn_level": config.levels.level(probability),
        "churn_model_no_purchase": quiet,
    }


def full_score(
    state: CustomerState, at: datetime, model: FittedModel, config: ChurnConfig
) -> ChurnScore | None:
    """Probability, P(alive), expected purchases, CLV, value at risk and the explanation."""
    inputs = _inputs(state, at)
    if inputs is None:
        return None
    with np.errstate(all="ignore"):
        return score_customer(model, inputs[0], inputs[1], config)
