"""A store with a known churn process, to check that the fit finds what was put in. Pure.

The generator (seeded ``numpy`` generator in, ``ChurnHistory`` and the truth out):

* **purchases up to the cut-off** follow BG/NBD itself: each customer buys at a Poisson rate
  ``lambda ~ Gamma(r, alpha)`` (per week) from a first purchase spread over the first weeks, and
  drops out after each repeat purchase with probability ``p ~ Beta(a, b)``; order amounts are
  Gamma-distributed;
* **service signals**: a share of customers has a complaint opened before the cut-off (some
  resolved before it: those no longer count), a share answered a satisfaction survey (CSAT 1-5);
  some complaints and answers come after the cut-off (the fit must not see them);
* **the horizon**: a customer makes no purchase in (cut-off, cut-off + horizon] with log-odds
  ``truth.weights`` applied to the formula's terms as of the cut-off, the model term being the
  BG/NBD P(no purchase in the horizon) under the generator's own parameters. So an open
  complaint multiplies the odds of churn by ``exp(w_complaints * log 2)`` and a satisfaction of
  0 by ``exp(w_low_sat)``: effects of known sign and size. Those who do not churn buy on one to
  three days of the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from tierflow_classifier.domain.churn import history as hist
from tierflow_classifier.domain.churn.bgnbd import BgNbdParams
from tierflow_classifier.domain.churn.score import ChurnWeights, combine

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class SyntheticStore:
    customers: int = 20_000
    acquisition_days: float = 84.0
    cutoff_day: float = 364.0
    horizon_days: float = 91.0
    purchase: BgNbdParams = field(default_factory=lambda: BgNbdParams(0.6, 7.0, 0.8, 1.6))
    weights: ChurnWeights = field(
        default_factory=lambda: ChurnWeights(
            intercept=-0.8,
            model=1.0,
            spend=-0.1,
            frequency_decline=0.0,
            open_complaints=0.9,
            low_satisfaction=1.6,
        )
    )
    complaint_share: float = 0.25
    resolved_share: float = 0.3  # of those complaints: resolved before the cut-off
    survey_share: float = 0.4
    late_share: float = 0.1  # signals dated after the cut-off (not to be seen by the fit)
    satisfaction_floor: float = 0.6

    @property
    def as_of_day(self) -> float:
        return self.cutoff_day + self.horizon_days


def _purchases_before(
    store: SyntheticStore, rng: np.random.Generator
) -> tuple[NDArray[np.intp], FloatArray]:
    n, params = store.customers, store.purchase
    lam = rng.gamma(params.r, 1.0 / params.alpha, n) / hist.WEEK_DAYS  # per day
    p = rng.beta(params.a, params.b, n)
    t = rng.uniform(0.0, store.acquisition_days, n)
    who: list[NDArray[np.intp]] = [np.arange(n, dtype=np.intp)]
    when: list[FloatArray] = [np.floor(t)]
    active = np.arange(n, dtype=np.intp)
    while active.size:
        t[active] += rng.exponential(1.0, active.size) / np.maximum(lam[active], 1e-9)
        active = active[t[active] <= store.cutoff_day]
        who.append(active)
        when.append(np.floor(t[active]))
        # A dropout can follow each repeat purchase (BG/NBD).
        active = active[rng.random(active.size) >= p[active]]
    return np.concatenate(who), np.concatenate(when)


def generate(
    store: SyntheticStore, rng: np.random.Generator
) -> tuple[hist.ChurnHistory, NDArray[np.bool_]]:
    """The store's history up to cut-off + horizon, and who churned in the horizon."""
    n, cutoff = store.customers, store.cutoff_day
    who, day = _purchases_before(store, rng)
    amount = rng.gamma(4.0, 10.0, who.size)

    complained = np.flatnonzero(rng.random(n) < store.complaint_share)
    late = rng.random(complained.size) < store.late_share
    opened = np.where(
        late,
        rng.uniform(cutoff + 1.0, store.as_of_day, complained.size),
        rng.uniform(store.acquisition_days, cutoff, complained.size),
    )
    resolved = np.where(
        ~late & (rng.random(complained.size) < store.resolved_share),
        opened + rng.random(complained.size) * np.maximum(cutoff - opened, 0.0),
        np.inf,
    )
    surveyed = np.flatnonzero(rng.random(n) < store.survey_share)
    late_survey = rng.random(surveyed.size) < store.late_share
    answered = np.where(
        late_survey,
        rng.uniform(cutoff + 1.0, store.as_of_day, surveyed.size),
        rng.uniform(store.acquisition_days, cutoff, surveyed.size),
    )
    score = rng.integers(1, 6, surveyed.size)
    before = hist.ChurnHistory(
        customers=n,
        purchase_customer=who,
        purchase_day=day,
        purchase_amount=amount,
        complaint_customer=complained.astype(np.intp),
        complaint_opened=opened,
        complaint_resolved=resolved,
        satisfaction_customer=surveyed.astype(np.intp),
        satisfaction_day=answered,
        satisfaction_value=np.asarray((score - 1.0) / 4.0, dtype=np.float64),
    )

    c = hist.cut(before, cutoff)
    terms = hist.terms_at(before, c, store.purchase, store.horizon_days, store.satisfaction_floor)
    logit = combine(terms, store.weights)
    churn = np.zeros(n, dtype=bool)
    churn[c.customer] = rng.random(c.size) < 1.0 / (1.0 + np.exp(-logit))

    stay = np.flatnonzero(~churn)
    visits = rng.integers(1, 4, stay.size)
    later_who = np.repeat(stay, visits)
    later_day = np.floor(rng.uniform(cutoff + 1.0, store.as_of_day + 1.0, later_who.size))
    later_day = np.minimum(later_day, store.as_of_day)
    history = hist.ChurnHistory(
        customers=n,
        purchase_customer=np.concatenate([who, later_who]).astype(np.intp),
        purchase_day=np.concatenate([day, later_day]),
        purchase_amount=np.concatenate([amount, rng.gamma(4.0, 10.0, later_who.size)]),
        complaint_customer=before.complaint_customer,
        complaint_opened=before.complaint_opened,
        complaint_resolved=before.complaint_resolved,
        satisfaction_customer=before.satisfaction_customer,
        satisfaction_day=before.satisfaction_day,
        satisfaction_value=before.satisfaction_value,
    )
    return history, churn
