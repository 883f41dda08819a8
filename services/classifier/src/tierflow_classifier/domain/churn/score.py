"""Churn risk of one customer: the purchase model's probability combined with service signals.

The churn probability is the probability of **no purchase in the next ``horizon_days``**::

    logit(P_churn) = w0
                   + w_model      * logit(P_model)
                   + w_spend      * log(1 + total_spend)
                   + w_complaints * log(1 + open_complaints)
                   + w_low_sat    * max(0, (satisfaction_floor - satisfaction) / satisfaction_floor)
                   + w_decline    * frequency_decline

``P_model`` is the BG/NBD (or MBG/NBD) P(no purchase in the horizon | x, t_x, T): a customer who
has dropped out never buys, an alive one stays quiet with probability
``((alpha + T) / (alpha + T + h)) ** (r + x)``. Entering it on the logit scale lets the service
signals shift the odds multiplicatively, and ``w_model`` / ``w0`` recalibrate it.

* ``total_spend`` is the customer's net lifetime spend in the base currency. BG/NBD assumes
  spend says nothing about loyalty, but on CDNOW it does (bigger spenders come back more
  often, also given recency and frequency), so it is a term of its own with a fitted weight.
* ``open_complaints`` enters as log(1 + n): the first open complaint says most, more say less.
* ``satisfaction`` is a 0..1 score (normalise CSAT/NPS before); only the shortfall under the
  floor counts, so satisfied customers are not rewarded twice for what the purchases show.
* ``frequency_decline`` in [0, 1] is 1 - (recent purchase rate / earlier purchase rate),
  clipped; see :func:`frequency_decline`. It catches customers who still buy, so recency does
  not flag them yet, but buy less often than they did.

A model fitted on the store's own time split (``store_fit.fit_store``) carries its own
weights and an isotonic calibration, ``P_churn = calibration(logit)``; the explanation then
lists both the uncalibrated sigmoid and the calibrated probability.

Missing signals contribute 0. The weights of the model and of the service signals are
constrained to be >= 0 when fitted, so a complaint or a falling frequency can never *lower*
the risk in an explanation. ``w0``, ``w_model``, ``w_spend`` and ``w_decline`` default to the
values fitted on CDNOW by ``scripts/churn_validation.py``, on a split *inside* the calibration
period, never on the holdout. There the fitted ``w_decline`` is 0: once the model has seen
recency, a falling frequency adds nothing on CDNOW (unconstrained it would even come out
negative), so it only counts where a store's own history says it does. CDNOW has no complaints
or satisfaction data, so ``w_complaints`` and ``w_low_sat`` are priors (one open complaint
doubles the odds of churn; a satisfaction of 0 multiplies them by about 4.5). All of these
are priors only: ``store_fit.fit_store`` refits every weight on the store's own time split and
keeps a prior only where the store's history cannot support a fit. Every score carries an
explanation listing each input and each term's contribution; the contributions sum to
``logit(P_churn)``.

Value: ``CLV = E[spend per purchase] * sum_k (E[purchases in (0, t_k]] - E[... t_(k-1)]])
/ (1 + annual_discount_rate) ** (t_k / 365)`` over ``clv_steps`` equal steps of
``clv_horizon_days``; ``value_at_risk = CLV * P_churn``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tierflow_classifier.domain.churn import bgnbd, gamma_gamma

if TYPE_CHECKING:
    from tierflow_classifier.domain.churn.fit import FittedModel

FloatArray = NDArray[np.float64]

TERMS = ("model", "spend", "open_complaints", "low_satisfaction", "frequency_decline")
LEVELS = ("low", "medium", "high", "critical")
LOGIT_EPS = 1e-9


@dataclass(frozen=True)
class ChurnWeights:
    # Fitted on CDNOW weeks 1-26 -> 27-39 (a 13-week horizon, like the default 90 days);
    # scripts/churn_validation.py refits them and fails if these drift.
    intercept: float = 1.5446
    model: float = 0.7402
    spend: float = -0.3270
    frequency_decline: float = 0.0
    # Priors: CDNOW has no complaints or satisfaction scores to fit them on.
    open_complaints: float = 1.0
    low_satisfaction: float = 1.5

    def of(self, term: str) -> float:
        return float(getattr(self, term))


@dataclass(frozen=True)
class ChurnLevels:
    """Lower bounds of P_churn for each level above ``low``."""

    medium: float = 0.3
    high: float = 0.6
    critical: float = 0.85

    def __post_init__(self) -> None:
        if not 0.0 < self.medium < self.high < self.critical < 1.0:
            raise ValueError("churn level thresholds must satisfy 0 < medium < high < critical < 1")

    def level(self, probability: float) -> str:
        if probability >= self.critical:
            return "critical"
        if probability >= self.high:
            return "high"
        if probability >= self.medium:
            return "medium"
        return "low"


@dataclass(frozen=True)
class ChurnConfig:
    horizon_days: float = 90.0
    clv_horizon_days: float = 365.0
    clv_steps: int = 12
    annual_discount_rate: float = 0.0
    satisfaction_floor: float = 0.6
    weights: ChurnWeights = field(default_factory=ChurnWeights)
    levels: ChurnLevels = field(default_factory=ChurnLevels)

    def __post_init__(self) -> None:
        if self.horizon_days <= 0 or self.clv_horizon_days <= 0:
            raise ValueError("horizons must be positive")
        if self.clv_steps < 1:
            raise ValueError("clv_steps must be >= 1")
        if self.annual_discount_rate <= -1.0:
            raise ValueError("annual_discount_rate must be > -1")
        if not 0.0 < self.satisfaction_floor <= 1.0:
            raise ValueError("satisfaction_floor must be in (0, 1]")


@dataclass(frozen=True)
class CustomerStats:
    """Sufficient statistics, in days: repeat purchases, last purchase and age since the first."""

    x: int
    t_x_days: float
    T_days: float
    mean_spend: float | None = None
    total_spend: float | None = None

    def __post_init__(self) -> None:
        if self.x < 0 or not 0.0 <= self.t_x_days <= self.T_days:
            raise ValueError("need x >= 0 and 0 <= t_x_days <= T_days")
        if self.x == 0 and self.t_x_days != 0.0:
            raise ValueError("t_x_days must be 0 when there is no repeat purchase")


@dataclass(frozen=True)
class ServiceSignals:
    open_complaints: int = 0
    satisfaction: float | None = None
    frequency_decline: float | None = None

    def __post_init__(self) -> None:
        if self.open_complaints < 0:
            raise ValueError("open_complaints must be >= 0")
        if self.satisfaction is not None and not 0.0 <= self.satisfaction <= 1.0:
            raise ValueError("satisfaction must be in [0, 1]")
        if self.frequency_decline is not None and not 0.0 <= self.frequency_decline <= 1.0:
            raise ValueError("frequency_decline must be in [0, 1]")


@dataclass(frozen=True)
class ChurnScore:
    probability: float
    logit: float
    level: str
    p_alive: float
    p_no_purchase_model: float
    expected_purchases: float
    expected_spend: float
    clv: float
    value_at_risk: float
    explanation: Mapping[str, Any]


def frequency_decline(
    recent_purchases: ArrayLike,
    recent_days: ArrayLike,
    earlier_purchases: ArrayLike,
    earlier_days: ArrayLike,
) -> FloatArray:
    """1 - (recent purchase rate / earlier purchase rate), clipped to [0, 1]; vectorised.

    ``earlier_purchases`` are the repeat purchases between the first purchase and the start of
    the recent window (``earlier_days`` long). 0 when there is no earlier baseline: a customer
    who never repeated has no frequency that could fall.
    """
    recent, r_days, earlier, e_days = np.broadcast_arrays(
        *(
            np.asarray(v, dtype=np.float64)
            for v in (recent_purchases, recent_days, earlier_purchases, earlier_days)
        )
    )
    has_baseline = (earlier > 0) & (e_days > 0) & (r_days > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (recent * e_days) / (earlier * r_days)
    return np.asarray(np.where(has_baseline, np.clip(1.0 - ratio, 0.0, 1.0), 0.0), dtype=np.float64)


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z) without overflow for very negative z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: ArrayLike) -> FloatArray:
    q = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def churn_terms(
    p_no_purchase_model: ArrayLike,
    *,
    total_spend: ArrayLike,
    open_complaints: ArrayLike,
    satisfaction: ArrayLike,
    decline: ArrayLike,
    satisfaction_floor: float,
) -> dict[str, FloatArray]:
    """The unweighted terms of the formula, vectorised; NaN spend/satisfaction/decline = missing."""
    p, spend, complaints, sat, dec = np.broadcast_arrays(
        *(
            np.asarray(v, dtype=np.float64)
            for v in (p_no_purchase_model, total_spend, open_complaints, satisfaction, decline)
        )
    )
    shortfall = np.clip((satisfaction_floor - sat) / satisfaction_floor, 0.0, 1.0)
    return {
        "model": logit(p),
        # Refunds can make net spend negative; that is no engagement, not negative engagement.
        "spend": np.where(np.isnan(spend), 0.0, np.log1p(np.maximum(spend, 0.0))),
        "open_complaints": np.log1p(complaints),
        "low_satisfaction": np.where(np.isnan(sat), 0.0, shortfall),
        "frequency_decline": np.where(np.isnan(dec), 0.0, np.clip(dec, 0.0, 1.0)),
    }


def combine(terms: Mapping[str, ArrayLike], weights: ChurnWeights) -> FloatArray:
    """logit(P_churn) for each customer."""
    z = np.asarray(weights.intercept, dtype=np.float64)
    for name in TERMS:
        z = z + weights.of(name) * np.asarray(terms[name], dtype=np.float64)
    return np.asarray(z, dtype=np.float64)


def customer_lifetime_value(
    params: bgnbd.BgNbdParams,
    spend: float,
    stats_units: tuple[float, float, float],
    time_unit_days: float,
    config: ChurnConfig,
) -> float:
    x, t_x, T = stats_units
    step_days = config.clv_horizon_days / config.clv_steps
    ends_days = step_days * np.arange(1, config.clv_steps + 1)
    cumulative = bgnbd.expected_purchases(params, ends_days / time_unit_days, x, t_x, T)
    increments = np.diff(np.concatenate([[0.0], cumulative]))
    discount = (1.0 + config.annual_discount_rate) ** (ends_days / 365.0)
    return float(spend * np.sum(increments / discount))


def score_customer(
    model: FittedModel,
    stats: CustomerStats,
    signals: ServiceSignals | None = None,
    config: ChurnConfig | None = None,
) -> ChurnScore:
    """Score one customer in O(1) from sufficient statistics and service signals."""
    signals = signals or ServiceSignals()
    config = config or ChurnConfig()
    params = model.purchase
    unit = model.time_unit_days
    x, t_x, T = float(stats.x), stats.t_x_days / unit, stats.T_days / unit
    horizon = config.horizon_days / unit

    alive = float(bgnbd.p_alive(params, x, t_x, T))
    quiet = float(bgnbd.p_no_purchase(params, horizon, x, t_x, T))
    purchases = float(bgnbd.expected_purchases(params, horizon, x, t_x, T))
    if model.spend is not None:
        observed = stats.mean_spend if stats.mean_spend is not None else math.nan
        spend = float(gamma_gamma.expected_spend(model.spend, stats.x, observed))
    else:
        # Refunds can push an observed mean below zero; a customer is worth at least nothing.
        spend = max(stats.mean_spend or 0.0, 0.0)
    clv = customer_lifetime_value(params, spend, (x, t_x, T), unit, config)

    nan = math.nan
    terms = churn_terms(
        quiet,
        total_spend=nan if stats.total_spend is None else stats.total_spend,
        open_complaints=signals.open_complaints,
        satisfaction=nan if signals.satisfaction is None else signals.satisfaction,
        decline=nan if signals.frequency_decline is None else signals.frequency_decline,
        satisfaction_floor=config.satisfaction_floor,
    )
    # A model fitted on the store's own split carries its weights and calibration; the
    # config's weights are the priors for a model without them.
    weights = model.weights or config.weights
    contributions: dict[str, dict[str, float]] = {
        "intercept": {"value": 1.0, "weight": weights.intercept, "contribution": weights.intercept}
    }
    for name in TERMS:
        value = float(terms[name])
        contributions[name] = {
            "value": value,
            "weight": weights.of(name),
            "contribution": weights.of(name) * value,
        }
    z = math.fsum(c["contribution"] for c in contributions.values())
    probability = model.probability(z)
    level = config.levels.level(probability)
    explanation: dict[str, Any] = {
        "formula": (
            "logit(P_churn) = intercept + w_model*logit(P_model_no_purchase)"
            " + w_spend*log(1+total_spend)"
            " + w_complaints*log(1+open_complaints)"
            " + w_low_sat*max(0,(floor-satisfaction)/floor) + w_decline*frequency_decline"
        ),
        "model_version": model.version,
        "model_variant": params.variant,
        "inputs": {
            "x": stats.x,
            "t_x_days": stats.t_x_days,
            "T_days": stats.T_days,
            "mean_spend": stats.mean_spend,
            "total_spend": stats.total_spend,
            "open_complaints": signals.open_complaints,
            "satisfaction": signals.satisfaction,
            "frequency_decline": signals.frequency_decline,
            "horizon_days": config.horizon_days,
            "satisfaction_floor": config.satisfaction_floor,
        },
        "model": {
            "p_alive": alive,
            "p_no_purchase": quiet,
            "expected_purchases": purchases,
            "expected_spend": spend,
        },
        "contributions": contributions,
        "logit": z,
        "uncalibrated_probability": sigmoid(z),
        "calibrated": model.calibration is not None,
        "probability": probability,
        "thresholds": {
            "medium": config.levels.medium,
            "high": config.levels.high,
            "critical": config.levels.critical,
        },
        "level": level,
        "clv": {"value": clv, "horizon_days": config.clv_horizon_days},
        "value_at_risk": clv * probability,
    }
    return ChurnScore(
        probability=probability,
        logit=z,
        level=level,
        p_alive=alive,
        p_no_purchase_model=quiet,
        expected_purchases=purchases,
        expected_spend=spend,
        clv=clv,
        value_at_risk=clv * probability,
        explanation=explanation,
    )
