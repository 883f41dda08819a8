"""The churn risk and value a classification change carries (its record's `scores`). Pure.

Every change record states P(churn), CLV and value at risk as the classifier knew them, so the
notifier can rank the care actions a change causes by value at risk. The read API's full score
costs ~150 µs a customer (CLV: twelve hypergeometric terms); a batch of changed customers is
scored here in one vectorised pass instead, with the same formulas (a unit test holds it to
`full_score`): the probability the classifier classifies by, CLV over the rule set's horizon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from tierflow_classifier.domain.churn import ChurnConfig, FittedModel, bgnbd, gamma_gamma
from tierflow_classifier.domain.churn_features import _inputs, churn_features
from tierflow_classifier.domain.classify import rule_set_churn_config
from tierflow_classifier.domain.model import CustomerState
from tierflow_classifier.domain.reclassification import Basis, Judging


@dataclass(frozen=True)
class Scored:
    """What a change record's `scores` hold (tierflow_common.contract.events.ChangeScores)."""

    churn_probability: float
    clv: float
    value_at_risk: float

    def as_data(self) -> dict[str, float]:
        return {
            "churn_probability": self.churn_probability,
            "clv": self.clv,
            "value_at_risk": self.value_at_risk,
        }


def change_scores(
    customers: Sequence[tuple[CustomerState, datetime]],
    model: FittedModel,
    config: ChurnConfig,
) -> list[Scored | None]:
    """Scores of each (state, at); None for a customer the model cannot score (no purchase).
    The probability is the one the classifier classifies by (churn_features), CLV and value
    at risk are score_customer's."""
    out: list[Scored | None] = [None] * len(customers)
    picked: list[int] = []
    probability: list[float] = []
    x: list[float] = []
    t_x: list[float] = []
    age: list[float] = []
    mean_spend: list[float] = []
    unit = model.time_unit_days
    for i, (state, at) in enumerate(customers):
        inputs = _inputs(state, at)
        if inputs is None:
            continue
        p = float(churn_features(state, at, model, config)["churn_probability"])
        if not math.isfinite(p):
            continue
        stats = inputs[0]
        picked.append(i)
        probability.append(p)
        x.append(float(stats.x))
        t_x.append(stats.t_x_days / unit)
        age.append(stats.T_days / unit)
        mean_spend.append(stats.mean_spend if stats.mean_spend is not None else math.nan)
    if not picked:
        return out
    spend = _expected_spend(model, np.asarray(x), np.asarray(mean_spend))
    clv = _clv(model, config, np.asarray(x), np.asarray(t_x), np.asarray(age), spend)
    for i, p, value in zip(picked, probability, clv.tolist(), strict=True):
        if math.isfinite(value):
            out[i] = Scored(churn_probability=p, clv=value, value_at_risk=value * p)
    return out


def _expected_spend(model: FittedModel, x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Spend per purchase as score_customer takes it: the Gamma-Gamma posterior mean, or
    (without a spend model) the observed mean, at least nothing."""
    if model.spend is not None:
        return np.asarray(gamma_gamma.expected_spend(model.spend, x, mean), dtype=np.float64)
    return np.asarray(np.maximum(np.nan_to_num(mean, nan=0.0), 0.0), dtype=np.float64)


def _clv(
    model: FittedModel,
    config: ChurnConfig,
    x: np.ndarray,
    t_x: np.ndarray,
    age: np.ndarray,
    spend: np.ndarray,
) -> np.ndarray:
    """score.customer_lifetime_value for every customer at once: (customers x steps) arrays."""
    step_days = config.clv_horizon_days / config.clv_steps
    ends_days = step_days * np.arange(1, config.clv_steps + 1)
    with np.errstate(all="ignore"):
        cumulative = bgnbd.expected_purchases(
            model.purchase,
            (ends_days / model.time_unit_days)[None, :],
            x[:, None],
            t_x[:, None],
            age[:, None],
        )
        increments = np.diff(cumulative, axis=1, prepend=0.0)
        discount = (1.0 + config.annual_discount_rate) ** (ends_days / 365.0)
        return np.asarray(spend * np.sum(increments / discount[None, :], axis=1))


def scores_by_customer(
    basis: Judging, customers: Mapping[str, tuple[CustomerState, datetime]]
) -> dict[str, Scored]:
    """The scores of changed customers (id -> (state after, instant of the change)), each by
    the churn model and rule set it is judged by; customers no model scores are left out."""
    groups: dict[int, tuple[Basis, list[str]]] = {}
    for cid in customers:
        mine = basis.for_customer(cid)
        if mine.outside.churn is not None:
            groups.setdefault(id(mine), (mine, []))[1].append(cid)
    out: dict[str, Scored] = {}
    for mine, ids in groups.values():
        assert mine.outside.churn is not None
        scored = change_scores(
            [customers[c] for c in ids], mine.outside.churn, rule_set_churn_config(mine.rules)
        )
        out.update((c, s) for c, s in zip(ids, scored, strict=True) if s is not None)
    return out
