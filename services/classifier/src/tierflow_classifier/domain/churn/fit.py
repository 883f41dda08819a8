"""Fitting the population: purchase model, spend model and the churn-score weights. No I/O.

Why scipy directly rather than a CLV library: the likelihoods are a few lines of
``gammaln``/``betaln``, and owning them lets us give L-BFGS-B the analytic gradient and work on
log-parameters (positivity without constraints). That is what keeps a fit on 1,000,000
customers well under the 60 s budget, with no dependency on an archived package.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special  # type: ignore[import-untyped]

from tierflow_classifier.domain.churn.bgnbd import BgNbdFit, BgNbdParams, Variant, fit_bgnbd
from tierflow_classifier.domain.churn.calibration import Calibration
from tierflow_classifier.domain.churn.gamma_gamma import GammaGammaParams, fit_gamma_gamma
from tierflow_classifier.domain.churn.report import FitReport
from tierflow_classifier.domain.churn.score import TERMS, ChurnWeights

FloatArray = NDArray[np.float64]
# 2: the store's own weights, calibration and fit report (domain/churn/store_fit.py); a
# version-1 record (purchase and spend model only) still loads, scoring with the priors.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


@dataclass(frozen=True)
class FittedModel:
    version: str
    time_unit_days: float
    variant: Variant
    bgnbd: BgNbdFit
    mbgnbd: BgNbdFit | None
    spend: GammaGammaParams | None
    spend_log_likelihood: float | None
    n_customers: int
    n_spend_customers: int
    fit_seconds: float
    # Fitted on the store's own time split (store_fit.fit_store); None: the priors in
    # ChurnConfig score and P(churn) is the combined logit's sigmoid, uncalibrated.
    weights: ChurnWeights | None = None
    calibration: Calibration | None = None
    report: FitReport | None = None

    @property
    def selected(self) -> BgNbdFit:
        if self.variant == "mbgnbd" and self.mbgnbd is not None:
            return self.mbgnbd
        return self.bgnbd

    @property
    def purchase(self) -> BgNbdParams:
        return self.selected.params

    @property
    def log_likelihood(self) -> float:
        return self.selected.log_likelihood

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record, for storing the fitted version next to the scores it made."""
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    def probability(self, logit: float) -> float:
        """P(churn) of a combined logit: calibrated where the fit could, else its sigmoid."""
        if self.calibration is not None:
            return self.calibration.one(logit)
        if logit < -700.0:  # math.exp would overflow; the probability is 0 to a double
            return 0.0
        return 1.0 / (1.0 + math.exp(-logit))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FittedModel:
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"unsupported churn model schema {data.get('schema')!r}")

        def purchase_fit(raw: Mapping[str, Any]) -> BgNbdFit:
            return BgNbdFit(**{**raw, "params": BgNbdParams(**raw["params"])})

        return cls(
            version=str(data["version"]),
            time_unit_days=float(data["time_unit_days"]),
            variant=data["variant"],
            bgnbd=purchase_fit(data["bgnbd"]),
            mbgnbd=purchase_fit(data["mbgnbd"]) if data["mbgnbd"] is not None else None,
            spend=GammaGammaParams(**data["spend"]) if data["spend"] is not None else None,
            spend_log_likelihood=data["spend_log_likelihood"],
            n_customers=int(data["n_customers"]),
            n_spend_customers=int(data["n_spend_customers"]),
            fit_seconds=float(data["fit_seconds"]),
            weights=ChurnWeights(**data["weights"]) if data.get("weights") else None,
            calibration=(
                Calibration(
                    logits=tuple(data["calibration"]["logits"]),
                    probabilities=tuple(data["calibration"]["probabilities"]),
                )
                if data.get("calibration")
                else None
            ),
            report=FitReport.from_dict(data["report"]) if data.get("report") else None,
        )


def _version(payload: Mapping[str, Any]) -> str:
    # Content-addressed: the same data and settings give the same version on every machine,
    # so a stored score can always be traced to the exact parameters that produced it.
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return "churn-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def fit_model(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    mean_spend: ArrayLike | None = None,
    *,
    time_unit_days: float = 1.0,
    variant: Literal["auto", "bgnbd", "mbgnbd"] = "auto",
) -> FittedModel:
    """Fit BG/NBD, MBG/NBD and Gamma-Gamma on one store's customers.

    ``x``, ``t_x`` and ``T`` are in units of ``time_unit_days`` days. With ``variant="auto"``
    the purchase model with the higher log-likelihood is selected (both have four parameters,
    so this is also the AIC/BIC choice) — never a holdout criterion.
    """
    started = time.perf_counter()
    xs = np.asarray(x, dtype=np.float64)
    ts = np.asarray(t_x, dtype=np.float64)
    Ts = np.asarray(T, dtype=np.float64)
    plain = fit_bgnbd(xs, ts, Ts, "bgnbd")
    modified = (
        fit_bgnbd(xs, ts, Ts, "mbgnbd", initial=replace(plain.params, variant="mbgnbd"))
        if variant != "bgnbd"
        else None
    )
    chosen: Variant
    if variant == "auto":
        assert modified is not None
        chosen = "mbgnbd" if modified.log_likelihood > plain.log_likelihood else "bgnbd"
    else:
        chosen = variant
    spend = None
    spend_ll = None
    n_spend = 0
    if mean_spend is not None:
        ms = np.asarray(mean_spend, dtype=np.float64)
        if np.any((xs > 0) & (ms > 0)):
            gg = fit_gamma_gamma(xs, ms)
            spend, spend_ll, n_spend = gg.params, gg.log_likelihood, gg.n_customers
    elapsed = time.perf_counter() - started
    payload = {
        "time_unit_days": time_unit_days,
        "variant": chosen,
        "bgnbd": asdict(plain),
        "mbgnbd": asdict(modified) if modified else None,
        "spend": asdict(spend) if spend else None,
        "n": int(xs.size),
    }
    return FittedModel(
        version=_version(payload),
        time_unit_days=time_unit_days,
        variant=chosen,
        bgnbd=plain,
        mbgnbd=modified,
        spend=spend,
        spend_log_likelihood=spend_ll,
        n_customers=int(xs.size),
        n_spend_customers=n_spend,
        fit_seconds=elapsed,
    )


@dataclass(frozen=True)
class CustomerSummary:
    customer_ids: NDArray[Any]
    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    mean_spend: FloatArray


def sufficient_statistics(
    customer_ids: ArrayLike, times: ArrayLike, amounts: ArrayLike, calibration_end: float
) -> CustomerSummary:
    """(x, t_x, T, mean repeat spend) per customer from a transaction log, up to calibration_end.

    Transactions at the same time (the caller's resolution, usually a day) are one purchase
    whose amount is the sum, as in Fader-Hardie's CDNOW preparation. The first purchase is not
    a repeat purchase and is excluded from the mean spend (NaN when x == 0).
    """
    ids = np.asarray(customer_ids)
    ts = np.asarray(times, dtype=np.float64)
    am = np.asarray(amounts, dtype=np.float64)
    keep = ts <= calibration_end
    ids, ts, am = ids[keep], ts[keep], am[keep]
    if ids.size == 0:  # nobody had bought yet (a cut-off before the store's first order)
        empty = np.zeros(0, dtype=np.float64)
        return CustomerSummary(ids, empty, empty, empty, empty)
    order = np.lexsort((ts, ids))
    ids, ts, am = ids[order], ts[order], am[order]
    new_purchase = np.ones(ids.size, dtype=bool)
    new_purchase[1:] = (ids[1:] != ids[:-1]) | (ts[1:] != ts[:-1])
    purchase_index = np.cumsum(new_purchase) - 1
    p_ids, p_ts = ids[new_purchase], ts[new_purchase]
    p_amounts = np.bincount(purchase_index, weights=am)
    first_of_customer = np.ones(p_ids.size, dtype=bool)
    first_of_customer[1:] = p_ids[1:] != p_ids[:-1]
    starts = np.flatnonzero(first_of_customer)
    ends = np.append(starts[1:], p_ids.size) - 1
    counts = ends - starts + 1
    first_t, last_t = p_ts[starts], p_ts[ends]
    customer_of = np.cumsum(first_of_customer) - 1
    repeat_sum = np.bincount(
        customer_of, weights=np.where(first_of_customer, 0.0, p_amounts), minlength=starts.size
    )
    x = (counts - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_spend = np.where(x > 0, repeat_sum / np.maximum(x, 1.0), np.nan)
    return CustomerSummary(
        customer_ids=p_ids[starts],
        x=x,
        t_x=last_t - first_t,
        T=calibration_end - first_t,
        mean_spend=mean_spend,
    )


def _logistic_loss(
    w: FloatArray, X: FloatArray, offset: FloatArray, y: FloatArray, l2: float
) -> tuple[float, FloatArray]:
    z = X @ w + offset
    # log(1 + e^z) - y z, written with logaddexp so large |z| neither overflows nor cancels.
    loss = np.logaddexp(0.0, z) - y * z
    grad = X.T @ (special.expit(z) - y) / y.size
    # The intercept is not shrunk: it only sets the base rate.
    penalty = np.concatenate([[0.0], w[1:]])
    return float(loss.mean() + 0.5 * l2 * np.dot(penalty, penalty)), grad + l2 * penalty


def fit_churn_weights(
    terms: Mapping[str, ArrayLike],
    churned: ArrayLike,
    prior: ChurnWeights | None = None,
    l2: float = 1e-4,
    fixed: Collection[str] = (),
    start: ChurnWeights | None = None,
) -> ChurnWeights:
    """Logistic regression of the churn label on the formula's terms.

    Terms that do not vary in the data (e.g. no complaints recorded) carry no information and
    keep the prior's weight (entering as a fixed offset) instead of an arbitrary fitted value;
    so do the terms named in ``fixed`` (too few customers with the signal to trust a fit).
    """
    prior = prior or ChurnWeights()
    y = np.asarray(churned, dtype=np.float64)
    columns = {
        name: np.broadcast_to(np.asarray(terms[name], dtype=np.float64), y.shape) for name in TERMS
    }
    free = [name for name in TERMS if name not in fixed and float(np.std(columns[name])) > 1e-12]
    offset = np.zeros_like(y)
    for name in TERMS:
        if name not in free:
            offset = offset + prior.of(name) * columns[name]
    X = np.column_stack([np.ones_like(y)] + [columns[name] for name in free])
    # Sign constraints keep explanations sane: more complaints, lower satisfaction or a steeper
    # decline never reads as "less risk". Spend's direction is left to the data.
    bounds = [(None, None)] + [(None, None) if name == "spend" else (0.0, None) for name in free]
    # From `start` (a fit on similar data) where given, else from the prior.
    origin = start or prior
    initial = np.array(
        [origin.intercept]
        + [origin.of(name) if name == "spend" else max(origin.of(name), 0.0) for name in free],
        dtype=np.float64,
    )
    coefficients = logistic_regression(X, y, offset=offset, bounds=bounds, start=initial, l2=l2)
    fitted = dict(zip(["intercept", *free], (float(v) for v in coefficients), strict=True))
    return replace(prior, **fitted)


def logistic_regression(
    X: FloatArray,
    y: FloatArray,
    *,
    offset: FloatArray | None = None,
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
    start: FloatArray | None = None,
    l2: float = 1e-4,
) -> FloatArray:
    """Coefficients of a (bounded, lightly L2-shrunk) logistic regression; column 0 is the
    intercept and is not shrunk."""
    # Imported here: only the fitting job needs the optimiser, and it costs a scoring-only
    # process (the classifier) about 12 MB of resident memory.
    from scipy import optimize  # noqa: PLC0415

    result = optimize.minimize(
        _logistic_loss,
        np.zeros(X.shape[1]) if start is None else start,
        args=(X, np.zeros_like(y) if offset is None else offset, y, l2),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
    )
    return np.asarray(result.x, dtype=np.float64)
