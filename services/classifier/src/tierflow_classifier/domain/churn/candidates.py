"""Features a stronger churn model might use, and the test each must pass to be kept. Pure.

Candidates, per customer as of a cut-off (same-day orders merged, as everywhere):

* ``purchase_gap_trend``: log((last gap + 1) / (mean earlier gap + 1)) in days, for customers
  with at least two repeat purchases (0 otherwise): gaps that widen say the habit is fading;
* ``spend_trend``: log((last purchase's spend + 1) / (mean earlier spend + 1)), for customers
  with a repeat purchase (0 otherwise): a shrinking basket;
* ``tenure``: log(1 + weeks since the first purchase).

The test (``compare``): on a split *inside* the calibration period, each candidate is added to
the formula's terms and the out-of-fold log loss (same folds, same isotonic calibration) is
compared per customer with the formula's own; a candidate is kept only if the paired bootstrap
95% interval of the difference lies entirely below 0. The holdout is never consulted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tierflow_classifier.domain.churn import calibration as cal
from tierflow_classifier.domain.churn import history as hist
from tierflow_classifier.domain.churn.fit import logistic_regression
from tierflow_classifier.domain.churn.score import TERMS
from tierflow_classifier.domain.churn.store_fit import SplitFit

FloatArray = NDArray[np.float64]
CANDIDATES = ("purchase_gap_trend", "spend_trend", "tenure")


def candidate_features(history: hist.ChurnHistory, c: hist.Cut) -> dict[str, FloatArray]:
    keep = history.purchase_day <= c.at_day
    pairs, inverse = np.unique(
        np.column_stack([history.purchase_customer[keep], history.purchase_day[keep]]),
        axis=0,
        return_inverse=True,
    )
    amounts = np.bincount(inverse.ravel(), weights=history.purchase_amount[keep])
    who, day = pairs[:, 0].astype(np.intp), pairs[:, 1]
    n = np.bincount(who, minlength=history.customers)
    ends = np.cumsum(n) - 1  # index of each customer's last purchase day (rows sorted by it)
    starts = ends - n + 1
    gap = np.zeros(history.customers)
    spend = np.zeros(history.customers)
    has3 = n >= 3
    e, s = ends[has3], starts[has3]
    last_gap = day[e] - day[e - 1]
    earlier_gap = (day[e - 1] - day[s]) / (n[has3] - 2)
    gap[has3] = np.log((last_gap + 1.0) / (earlier_gap + 1.0))
    has2 = n >= 2
    e, s = ends[has2], starts[has2]
    totals = np.concatenate([[0.0], np.cumsum(amounts)])
    earlier_spend = (totals[e] - totals[s]) / (n[has2] - 1)
    spend[has2] = np.log(
        (np.maximum(amounts[e], 0.0) + 1.0) / (np.maximum(earlier_spend, 0.0) + 1.0)
    )
    return {
        "purchase_gap_trend": gap[c.customer],
        "spend_trend": spend[c.customer],
        "tenure": np.log1p(c.summary.T),
    }


@dataclass(frozen=True)
class CandidateResult:
    name: str
    log_loss: float  # out of fold, calibrated, with the candidate
    base_log_loss: float
    difference_interval: tuple[float, float]  # 95% of (with - without), paired bootstrap
    auc: float
    base_auc: float
    weight: float  # fitted on the whole split

    @property
    def kept(self) -> bool:
        return self.difference_interval[1] < 0.0


def _oof(
    X: FloatArray, y: FloatArray, offset: FloatArray, fold_of: NDArray[np.intp], folds: int
) -> FloatArray:
    out_p = np.empty(y.size)
    for k in range(folds):
        out = fold_of == k
        w = logistic_regression(X[~out], y[~out], offset=offset[~out])
        calibration = cal.fit_isotonic(X[~out] @ w + offset[~out], y[~out])
        out_p[out] = calibration.apply(X[out] @ w + offset[out])
    return out_p


def _losses(p: FloatArray, y: FloatArray) -> FloatArray:
    q = np.clip(p, 1e-15, 1.0 - 1e-15)
    return np.asarray(-(y * np.log(q) + (1.0 - y) * np.log1p(-q)), dtype=np.float64)


def compare(
    fitted: SplitFit,
    extra: dict[str, FloatArray],
    rng: np.random.Generator,
    *,
    folds: int = 5,
    resamples: int = 500,
) -> list[CandidateResult]:
    y = fitted.labels.astype(np.float64)
    learned = ["model", "spend"] + [n for n, (ok, _, _) in fitted.decisions.items() if ok]
    offset = np.zeros(y.size)
    for name in TERMS:
        if name not in learned:
            offset = offset + fitted.weights.of(name) * fitted.terms[name]
    base_X = np.column_stack([np.ones(y.size)] + [fitted.terms[n] for n in learned])
    fold_of = np.asarray(rng.permutation(y.size) % folds, dtype=np.intp)
    base_p = _oof(base_X, y, offset, fold_of, folds)
    base_loss = _losses(base_p, y)
    results = []
    for name, column in extra.items():
        X = np.column_stack([base_X, column])
        p = _oof(X, y, offset, fold_of, folds)
        diff = _losses(p, y) - base_loss
        draws = [float(diff[rng.integers(0, y.size, y.size)].mean()) for _ in range(resamples)]
        low, high = np.percentile(draws, [2.5, 97.5])
        weight = float(logistic_regression(X, y, offset=offset)[-1])
        results.append(
            CandidateResult(
                name=name,
                log_loss=float(_losses(p, y).mean()),
                base_log_loss=float(base_loss.mean()),
                difference_interval=(float(low), float(high)),
                auc=cal.roc_auc(p, fitted.labels),
                base_auc=cal.roc_auc(base_p, fitted.labels),
                weight=weight,
            )
        )
    return results
