"""Calibrating P(churn) on held-out labels, and the holdout metrics a fit reports. Pure.

The combined logit ranks customers well but its probabilities overstate risk (on the CDNOW
holdout every level by 8-11 points before this): the weights are fitted on a shorter split
than the horizon they are used for, and the purchase model is refitted after them. Isotonic
regression maps the logit to the observed churn rate without assuming a shape, monotone so the
ranking (and every explanation's direction) is kept.

The regression itself is ``scipy.optimize.isotonic_regression`` (SciPy >= 1.12, its
pool-adjacent-violators implementation): scikit-learn's ``IsotonicRegression`` is the same
algorithm but not a dependency of the project, and SciPy is. Between the fitted blocks the map
is linear in the logit (knots at each block's mean logit), so customers of one block are still
told apart and the calibrated score does not collapse into ties.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
# A probability of exactly 0 or 1 would make one surprise cost infinite log loss, and no store's
# history justifies certainty; the observed rates of the extreme blocks are clipped to this.
PROBABILITY_FLOOR = 1e-3


@dataclass(frozen=True)
class Calibration:
    """A monotone map from the combined logit to P(churn): linear between knots, flat outside."""

    logits: tuple[float, ...]
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.logits or len(self.logits) != len(self.probabilities):
            raise ValueError("a calibration needs as many probabilities as knots, at least one")
        if any(b < a for a, b in zip(self.logits, self.logits[1:], strict=False)):
            raise ValueError("calibration knots must be increasing")
        if any(b < a for a, b in zip(self.probabilities, self.probabilities[1:], strict=False)):
            raise ValueError("calibrated probabilities must not decrease")

    def apply(self, z: ArrayLike) -> FloatArray:
        return np.asarray(
            np.interp(np.asarray(z, dtype=np.float64), self.logits, self.probabilities),
            dtype=np.float64,
        )

    def one(self, z: float) -> float:
        """``apply`` for one customer without numpy's per-call overhead (the scoring path)."""
        knots, values = self.logits, self.probabilities
        i = bisect.bisect_right(knots, z)
        if i == 0:
            return values[0]
        if i == len(knots):
            return values[-1]
        lo, hi = knots[i - 1], knots[i]
        share = (z - lo) / (hi - lo) if hi > lo else 1.0
        return values[i - 1] + share * (values[i] - values[i - 1])


def fit_isotonic(logit: ArrayLike, churned: ArrayLike) -> Calibration:
    """Isotonic regression of the churn label on the logit (ties of the logit share a value)."""
    from scipy import optimize  # type: ignore[import-untyped]  # noqa: PLC0415 (fitting only)

    z = np.asarray(logit, dtype=np.float64)
    y = np.asarray(churned, dtype=np.float64)
    if z.size == 0:
        raise ValueError("cannot calibrate on zero customers")
    values, inverse, counts = np.unique(z, return_inverse=True, return_counts=True)
    rates = np.bincount(inverse, weights=y) / counts
    fitted = optimize.isotonic_regression(rates, weights=counts.astype(np.float64))
    starts = np.asarray(fitted.blocks[:-1], dtype=np.intp)
    weights = np.add.reduceat(counts.astype(np.float64), starts)
    centres = np.add.reduceat(values * counts, starts) / weights
    probabilities = np.clip(fitted.x[starts], PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
    return Calibration(
        logits=tuple(float(v) for v in centres),
        probabilities=tuple(float(v) for v in probabilities),
    )


def roc_auc(score: ArrayLike, positive: ArrayLike) -> float:
    """Mann-Whitney AUC with average ranks for ties (many customers share x = 0 and T)."""
    s = np.asarray(score, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos = float(pos.sum())
    n_neg = float(pos.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Imported here: scipy.stats costs a service ~40 MiB it needs only while fitting.
    from scipy import stats  # noqa: PLC0415

    ranks = stats.rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    positive: ArrayLike,
    rng: np.random.Generator,
    resamples: int = 500,
) -> tuple[float, float]:
    """95% interval of AUC(a) - AUC(b), resampling customers (both scores on the same draw)."""
    sa, sb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, pos.size, pos.size)
        diffs.append(roc_auc(sa[i], pos[i]) - roc_auc(sb[i], pos[i]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def log_loss(probability: ArrayLike, churned: ArrayLike) -> float:
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-15, 1.0 - 1e-15)
    y = np.asarray(churned, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def brier(probability: ArrayLike, churned: ArrayLike) -> float:
    p = np.asarray(probability, dtype=np.float64)
    return float(np.mean((p - np.asarray(churned, dtype=np.float64)) ** 2))


@dataclass(frozen=True)
class LevelRow:
    """One churn level on the holdout: how many, what they were told, what happened."""

    level: str
    customers: int
    mean_probability: float
    churn_rate: float


def level_table(
    probability: ArrayLike, churned: ArrayLike, bounds: Sequence[tuple[str, float]]
) -> tuple[LevelRow, ...]:
    """Rows for the levels with customers; ``bounds`` are (name, lower bound), lowest first."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(churned, dtype=np.float64)
    lowers = np.array([lower for _, lower in bounds])
    index = np.searchsorted(lowers, p, side="right") - 1
    rows = []
    for k, (name, _) in enumerate(bounds):
        inside = index == k
        if inside.any():
            rows.append(
                LevelRow(name, int(inside.sum()), float(p[inside].mean()), float(y[inside].mean()))
            )
    return tuple(rows)


def reliability_bins(
    probability: ArrayLike, churned: ArrayLike, bins: int = 10
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """(mean predicted, observed rate, customers) per equal-width bin of P, empty bins dropped."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(churned, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    keep = counts > 0
    predicted = np.bincount(index, weights=p, minlength=bins)[keep] / counts[keep]
    observed = np.bincount(index, weights=y, minlength=bins)[keep] / counts[keep]
    return predicted, observed, counts[keep]
