"""The churn model fitted on one store's own history, with a time split. Pure (arrays in).

Split: the history up to ``cutoff = as_of - horizon`` is the calibration window (the purchase
model is fitted on it and the formula's terms computed as of the cut-off), "no purchase in
(cutoff, as_of]" the label. On that split:

1. the combining weights are a logistic regression of the label on the terms
   (``fit.fit_churn_weights``); complaints, low satisfaction and frequency decline are learned
   only where at least ``min_signal_customers`` customers had the signal at the cut-off (and
   both outcomes occur among them), else they keep their priors, and the report says why;
2. P(churn) is calibrated by isotonic regression of the label on the combined logit;
3. the holdout metrics are out-of-fold: customers are dealt into ``folds`` folds, each
   scored by weights and a calibration fitted on the others, so no metric has seen its own
   label; the weights and calibration kept are then fitted on every customer of the split.

The model that scores is the purchase model refitted on the whole history up to ``as_of``,
combined with those weights and that calibration (the horizon it was fitted for is the
horizon it scores; scripts/churn_validation.py runs this very function on CDNOW).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from tierflow_classifier.domain.churn import calibration as cal
from tierflow_classifier.domain.churn import history as hist
from tierflow_classifier.domain.churn.bgnbd import expected_purchases
from tierflow_classifier.domain.churn.fit import FittedModel, _version, fit_churn_weights, fit_model
from tierflow_classifier.domain.churn.report import FitReport, HoldoutMetrics, TermFit
from tierflow_classifier.domain.churn.score import LEVELS, ChurnConfig, ChurnWeights, combine

FloatArray = NDArray[np.float64]
SIGNALS = ("open_complaints", "low_satisfaction", "frequency_decline")
MIN_SPLIT_CUSTOMERS = 200
MIN_SIGNAL_CUSTOMERS = 30
FOLDS = 5
SEED = 16


def _signal_fits(
    terms: dict[str, FloatArray], labels: NDArray[np.bool_], prior: ChurnWeights, minimum: int
) -> dict[str, tuple[bool, str, int]]:
    """Per service signal: (learn it?, why (not), customers with the signal at the cut-off)."""
    decisions = {}
    for name in SIGNALS:
        has = terms[name] > 0
        n = int(has.sum())
        if n == 0:
            decisions[name] = (False, "no customer had this signal at the cut-off: prior kept", n)
        elif n < minimum:
            decisions[name] = (
                False,
                f"only {n} customers had this signal at the cut-off (need {minimum}): prior kept",
                n,
            )
        elif labels[has].all() or not labels[has].any():
            decisions[name] = (
                False,
                "every customer with this signal had the same outcome: prior kept",
                n,
            )
        else:
            decisions[name] = (True, f"learned from {n} customers with the signal", n)
    return decisions


def _fit_fold(
    terms: dict[str, FloatArray],
    labels: NDArray[np.bool_],
    rows: NDArray[np.intp],
    prior: ChurnWeights,
    fixed: tuple[str, ...],
    start: ChurnWeights | None = None,
) -> tuple[ChurnWeights, cal.Calibration]:
    sub = {name: v[rows] for name, v in terms.items()}
    weights = fit_churn_weights(sub, labels[rows], prior, fixed=fixed, start=start)
    return weights, cal.fit_isotonic(combine(sub, weights), labels[rows])


@dataclass(frozen=True)
class SplitFit:
    """The time split and what was fitted on it: out-of-fold scores for every customer of
    the split (``raw``: sigmoid of the logit; ``calibrated``) and the kept weights and map."""

    cut: hist.Cut
    labels: NDArray[np.bool_]
    terms: dict[str, FloatArray]
    raw: FloatArray
    calibrated: FloatArray
    recency: FloatArray
    expected_purchases: FloatArray  # plain BG/NBD, in the horizon: the second baseline
    weights: ChurnWeights
    calibration: cal.Calibration
    decisions: dict[str, tuple[bool, str, int]]


def split_fit(
    history: hist.ChurnHistory,
    as_of_day: float,
    config: ChurnConfig,
    prior: ChurnWeights,
    *,
    folds: int = FOLDS,
    min_split_customers: int = MIN_SPLIT_CUSTOMERS,
    min_signal_customers: int = MIN_SIGNAL_CUSTOMERS,
    seed: int = SEED,
) -> SplitFit | str:
    """Weights and calibration on the split ending at ``as_of_day``, or why there is none."""
    horizon = config.horizon_days
    split = hist.cut(history, as_of_day - horizon)
    if split.size < min_split_customers:
        return (
            f"{split.size} customers had bought {horizon:g} days before the fit "
            f"(need {min_split_customers} for a time split): prior weights, uncalibrated"
        )
    if not np.any(split.summary.x > 0):
        return "no repeat purchase before the cut-off: prior weights, uncalibrated"
    labels = hist.churned(history, split, as_of_day)
    if labels.all() or not labels.any():
        return "every customer of the split had the same outcome: prior weights, uncalibrated"
    ss = split.summary
    # Only the purchase model enters the terms (spend enters as the total): no spend model.
    split_model = fit_model(ss.x, ss.t_x, ss.T, None, time_unit_days=hist.WEEK_DAYS)
    terms = hist.terms_at(history, split, split_model.purchase, horizon, config.satisfaction_floor)
    decisions = _signal_fits(terms, labels, prior, min_signal_customers)
    fixed = tuple(name for name, (learn, _, _) in decisions.items() if not learn)
    weights, calibration = _fit_fold(terms, labels, np.arange(split.size), prior, fixed)
    fold_of = np.random.default_rng(seed).permutation(split.size) % folds
    raw = np.empty(split.size)
    calibrated = np.empty(split.size)
    for k in range(folds):
        out = fold_of == k
        # Started from the whole split's weights: a few iterations instead of a few dozen.
        weights_k, calibration_k = _fit_fold(
            terms, labels, np.flatnonzero(~out), prior, fixed, start=weights
        )
        z = combine({name: v[out] for name, v in terms.items()}, weights_k)
        raw[out] = 1.0 / (1.0 + np.exp(-z))
        calibrated[out] = calibration_k.apply(z)
    ey = expected_purchases(split_model.bgnbd.params, horizon / hist.WEEK_DAYS, ss.x, ss.t_x, ss.T)
    return SplitFit(
        cut=split,
        labels=labels,
        terms=terms,
        raw=raw,
        calibrated=calibrated,
        recency=ss.T - ss.t_x,
        expected_purchases=ey,
        weights=weights,
        calibration=calibration,
        decisions=decisions,
    )


def holdout_metrics(fitted: SplitFit, config: ChurnConfig) -> HoldoutMetrics:
    levels = config.levels
    bounds = list(zip(LEVELS, (0.0, levels.medium, levels.high, levels.critical), strict=True))
    y, p, raw = fitted.labels, fitted.calibrated, fitted.raw
    return HoldoutMetrics(
        customers=fitted.cut.size,
        churn_rate=float(y.mean()),
        auc=cal.roc_auc(p, y),
        auc_uncalibrated=cal.roc_auc(raw, y),
        auc_recency=cal.roc_auc(fitted.recency, y),
        auc_bgnbd=cal.roc_auc(-fitted.expected_purchases, y),
        log_loss=cal.log_loss(p, y),
        log_loss_uncalibrated=cal.log_loss(raw, y),
        brier=cal.brier(p, y),
        brier_uncalibrated=cal.brier(raw, y),
        calibration=cal.level_table(p, y, bounds),
    )


def fit_store(
    history: hist.ChurnHistory,
    as_of_day: float,
    *,
    config: ChurnConfig | None = None,
    prior: ChurnWeights | None = None,
    folds: int = FOLDS,
    min_split_customers: int = MIN_SPLIT_CUSTOMERS,
    min_signal_customers: int = MIN_SIGNAL_CUSTOMERS,
    seed: int = SEED,
) -> FittedModel | None:
    """The store's model as of ``as_of_day``; None when nobody has a repeat purchase yet."""
    started = time.perf_counter()
    config = config or ChurnConfig()
    prior = prior or config.weights
    s = hist.with_undated(history, hist.cut(history, as_of_day))
    if s.x.size == 0 or not np.any(s.x > 0):
        return None
    final = fit_model(s.x, s.t_x, s.T, s.mean_spend, time_unit_days=hist.WEEK_DAYS)
    fitted = split_fit(
        history,
        as_of_day,
        config,
        prior,
        folds=folds,
        min_split_customers=min_split_customers,
        min_signal_customers=min_signal_customers,
        seed=seed,
    )
    common = {
        "horizon_days": config.horizon_days,
        "cutoff_day": as_of_day - config.horizon_days,
        "as_of_day": as_of_day,
    }
    if isinstance(fitted, str):
        report = FitReport(
            **common,
            folds=0,
            calibrated=False,
            fallback=fitted,
            terms=tuple(
                TermFit(name, prior.of(name), prior.of(name), False, fitted, 0)
                for name in ("intercept", "model", "spend", *SIGNALS)
            ),
            holdout=None,
        )
        return _finish(final, prior, None, report, started)
    w = fitted.weights
    term_fits = [
        TermFit(name, w.of(name), prior.of(name), True, "learned", fitted.cut.size)
        for name in ("intercept", "model", "spend")
    ]
    for name, (learn, reason, n) in fitted.decisions.items():
        term_fits.append(TermFit(name, w.of(name), prior.of(name), learn, reason, n))
    report = FitReport(
        **common,
        folds=folds,
        calibrated=True,
        fallback=None,
        terms=tuple(term_fits),
        holdout=holdout_metrics(fitted, config),
    )
    return _finish(final, w, fitted.calibration, report, started)


def _finish(
    model: FittedModel,
    weights: ChurnWeights,
    calibration: cal.Calibration | None,
    report: FitReport,
    started: float,
) -> FittedModel:
    # The version covers what scores (weights, calibration), not only the purchase model.
    version = _version(
        {
            "purchase": model.version,
            "weights": weights,
            "calibration": calibration,
            "horizon_days": report.horizon_days,
        }
    )
    return replace(
        model,
        version=version,
        weights=weights,
        calibration=calibration,
        report=report,
        fit_seconds=time.perf_counter() - started,
    )
