"""A store's history as the churn fit reads it, and the formula's terms as of any cut-off. Pure.

One data preparation for production and validation (scripts/churn_validation.py calls these
same functions on CDNOW): purchases on the same day are one purchase whose amount is the sum
(``fit.sufficient_statistics``), the time unit is the week, the frequency decline compares the
last ``DECLINE_WINDOW_DAYS`` with the time before it, and a service signal counts as of the
cut-off only (a complaint opened later, or a survey answered later, is not seen).

Times are day numbers on one axis (production: days since 1970-01-01 UTC; CDNOW: days since
1997-01-01). Customers are indices into ``customer_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from tierflow_classifier.domain.churn import bgnbd
from tierflow_classifier.domain.churn.fit import CustomerSummary, sufficient_statistics
from tierflow_classifier.domain.churn.score import churn_terms, frequency_decline

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]
WEEK_DAYS = 7.0
DECLINE_WINDOW_DAYS = 91.0  # the "recent" window of the falling-frequency signal (13 weeks)


def _floats(values: object = ()) -> FloatArray:
    return np.asarray(values, dtype=np.float64)


def _indices(values: object = ()) -> IndexArray:
    return np.asarray(values, dtype=np.intp)


@dataclass(frozen=True)
class ChurnHistory:
    """Dated facts per customer: orders (several a day allowed), complaints, satisfaction."""

    customers: int
    purchase_customer: IndexArray
    purchase_day: FloatArray
    purchase_amount: FloatArray
    complaint_customer: IndexArray = field(default_factory=_indices)
    complaint_opened: FloatArray = field(default_factory=_floats)
    complaint_resolved: FloatArray = field(default_factory=_floats)  # inf: still open
    satisfaction_customer: IndexArray = field(default_factory=_indices)
    satisfaction_day: FloatArray = field(default_factory=_floats)
    satisfaction_value: FloatArray = field(default_factory=_floats)  # 0..1
    # Customers known only by their lifetime counters (state written before the dated
    # history was kept): (x, t_x, T, mean spend) in weeks as of the fit. They inform the
    # purchase model of the fit's instant, not the time split.
    undated: CustomerSummary | None = None

    @property
    def has_complaints(self) -> bool:
        return bool(self.complaint_customer.size)

    @property
    def has_satisfaction(self) -> bool:
        return bool(self.satisfaction_customer.size)


@dataclass(frozen=True)
class Cut:
    """The customers who had bought by a cut-off, their statistics (weeks) and indices."""

    at_day: float
    summary: CustomerSummary
    customer: IndexArray

    @property
    def size(self) -> int:
        return int(self.customer.size)


def cut(history: ChurnHistory, at_day: float) -> Cut:
    s = sufficient_statistics(
        history.purchase_customer,
        history.purchase_day / WEEK_DAYS,
        history.purchase_amount,
        at_day / WEEK_DAYS,
    )
    return Cut(at_day, s, np.asarray(s.customer_ids, dtype=np.intp))


def with_undated(history: ChurnHistory, c: Cut) -> CustomerSummary:
    """The cut's statistics and the undated customers' together (for the purchase model)."""
    u = history.undated
    if u is None or u.x.size == 0:
        return c.summary
    s = c.summary
    return CustomerSummary(
        customer_ids=np.concatenate([s.customer_ids, np.full(u.x.size, -1)]),
        x=np.concatenate([s.x, u.x]),
        t_x=np.concatenate([s.t_x, u.t_x]),
        T=np.concatenate([s.T, u.T]),
        mean_spend=np.concatenate([s.mean_spend, u.mean_spend]),
    )


def purchase_days_between(history: ChurnHistory, c: Cut, start: float, end: float) -> FloatArray:
    """Distinct purchase days in (start, end] of each customer of the cut."""
    inside = (history.purchase_day > start) & (history.purchase_day <= end)
    pairs = np.unique(
        np.column_stack([history.purchase_customer[inside], history.purchase_day[inside]]), axis=0
    )
    counts = np.bincount(pairs[:, 0].astype(np.intp), minlength=history.customers)
    return counts[c.customer].astype(np.float64)


def churned(history: ChurnHistory, c: Cut, end_day: float) -> NDArray[np.bool_]:
    """The label: no purchase in (cut-off, end_day]."""
    return np.asarray(purchase_days_between(history, c, c.at_day, end_day) == 0, dtype=bool)


def decline_at(history: ChurnHistory, c: Cut) -> FloatArray:
    window_start = c.at_day - DECLINE_WINDOW_DAYS
    recent = purchase_days_between(history, c, window_start, c.at_day)
    earlier_repeat = np.maximum(c.summary.x - recent, 0.0)
    first = c.at_day - c.summary.T * WEEK_DAYS
    return frequency_decline(recent, DECLINE_WINDOW_DAYS, earlier_repeat, window_start - first)


def spend_until(history: ChurnHistory, c: Cut) -> FloatArray:
    keep = history.purchase_day <= c.at_day
    total = np.bincount(
        history.purchase_customer[keep],
        weights=history.purchase_amount[keep],
        minlength=history.customers,
    )
    return np.asarray(total[c.customer], dtype=np.float64)


def open_complaints_at(history: ChurnHistory, c: Cut) -> FloatArray:
    opened = (history.complaint_opened <= c.at_day) & (history.complaint_resolved > c.at_day)
    counts = np.bincount(history.complaint_customer[opened], minlength=history.customers)
    return counts[c.customer].astype(np.float64)


def satisfaction_at(history: ChurnHistory, c: Cut) -> FloatArray:
    """The latest satisfaction answered by the cut-off (NaN: none yet)."""
    latest = np.full(history.customers, np.nan)
    seen = history.satisfaction_day <= c.at_day
    who = history.satisfaction_customer[seen]
    day = history.satisfaction_day[seen]
    value = history.satisfaction_value[seen]
    order = np.lexsort((day, who))  # the last row of each customer is its latest answer
    latest[who[order]] = value[order]
    return latest[c.customer]


def terms_at(
    history: ChurnHistory,
    c: Cut,
    purchase: bgnbd.BgNbdParams,
    horizon_days: float,
    satisfaction_floor: float,
) -> dict[str, FloatArray]:
    """The churn formula's unweighted terms for every customer of the cut."""
    s = c.summary
    return churn_terms(
        bgnbd.p_no_purchase(purchase, horizon_days / WEEK_DAYS, s.x, s.t_x, s.T),
        total_spend=spend_until(history, c),
        open_complaints=open_complaints_at(history, c),
        satisfaction=satisfaction_at(history, c),
        decline=decline_at(history, c),
        satisfaction_floor=satisfaction_floor,
    )
