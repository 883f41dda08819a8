"""Gamma-Gamma spend model (Fader & Hardie 2013, "The Gamma-Gamma Model of Monetary Value").

A customer's transaction values are Gamma(p, nu) with a customer-specific rate
``nu ~ Gamma(q, gamma)``; the mean of x transactions is then a sufficient statistic, and the
posterior mean spend shrinks the observed mean towards the population mean
``p * gamma / (q - 1)`` with weight ``p x / (p x + q - 1)``. It assumes spend is independent
of purchase frequency, which is why it is fitted separately from the BG/NBD. No I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special  # type: ignore[import-untyped]

FloatArray = NDArray[np.float64]

_LOG_BOUND = 12.0


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    gamma: float

    @property
    def population_mean(self) -> float:
        """Mean spend per transaction of a customer we know nothing about (needs q > 1)."""
        if self.q <= 1.0:
            return math.inf
        return self.p * self.gamma / (self.q - 1.0)


@dataclass(frozen=True)
class GammaGammaFit:
    params: GammaGammaParams
    log_likelihood: float
    n_customers: int
    converged: bool


def _usable(x: ArrayLike, mean_spend: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xs, ms = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64), np.asarray(mean_spend, dtype=np.float64)
    )
    # Customers without a repeat purchase (or with refunds netting to <= 0) carry no
    # information about their spend rate under this model.
    keep = (xs > 0) & (ms > 0) & np.isfinite(ms)
    return xs[keep], ms[keep]


def log_likelihood(params: GammaGammaParams, x: ArrayLike, mean_spend: ArrayLike) -> FloatArray:
    """Per-customer log density of the observed mean spend over x transactions."""
    xs, ms = _usable(x, mean_spend)
    p, q, g = params.p, params.q, params.gamma
    px = p * xs
    return np.asarray(
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * math.log(g)
        + (px - 1.0) * np.log(ms)
        + px * np.log(xs)
        - (px + q) * np.log(g + ms * xs),
        dtype=np.float64,
    )


def _nll(
    log_params: FloatArray, xs: FloatArray, ms: FloatArray, log_ms: FloatArray, log_xs: FloatArray
) -> tuple[float, FloatArray]:
    p, q, g = (float(v) for v in np.exp(log_params))
    px = p * xs
    log_gmx = np.log(g + ms * xs)
    ll = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * math.log(g)
        + (px - 1.0) * log_ms
        + px * log_xs
        - (px + q) * log_gmx
    )
    psi_pxq = special.digamma(px + q)
    d_p = xs * (psi_pxq - special.digamma(px) + log_ms + log_xs - log_gmx)
    d_q = psi_pxq - special.digamma(q) + math.log(g) - log_gmx
    d_g = q / g - (px + q) / (g + ms * xs)
    n = float(xs.size)
    grad = -np.array([p * d_p.sum(), q * d_q.sum(), g * d_g.sum()], dtype=np.float64) / n
    return float(-ll.sum() / n), grad


def fit_gamma_gamma(x: ArrayLike, mean_spend: ArrayLike) -> GammaGammaFit:
    """Maximum-likelihood (p, q, gamma) from customers with at least one repeat purchase."""
    xs, ms = _usable(x, mean_spend)
    if xs.size == 0:
        raise ValueError("cannot fit the spend model without customers with repeat purchases")
    # Method-of-moments-ish start at the data's spend scale: q = 3 keeps the population mean
    # finite, and gamma then matches the observed average.
    start = np.log([1.0, 3.0, 2.0 * float(np.mean(ms))])
    # Imported here: only the fitting job needs the optimiser, and it costs a scoring-only
    # process (the classifier) about 12 MB of resident memory.
    from scipy import optimize  # noqa: PLC0415

    result = optimize.minimize(
        _nll,
        start,
        args=(xs, ms, np.log(ms), np.log(xs)),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 3,
        options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9},
    )
    p, q, g = (float(v) for v in np.exp(result.x))
    return GammaGammaFit(
        params=GammaGammaParams(p=p, q=q, gamma=g),
        log_likelihood=float(-result.fun * xs.size),
        n_customers=int(xs.size),
        converged=bool(result.success),
    )


def expected_spend(params: GammaGammaParams, x: ArrayLike, mean_spend: ArrayLike) -> FloatArray:
    """E[spend per transaction | x, observed mean]; the population mean when x == 0."""
    xs, ms = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64), np.asarray(mean_spend, dtype=np.float64)
    )
    p, q, g = params.p, params.q, params.gamma
    informative = (xs > 0) & (ms > 0) & np.isfinite(ms)
    xs_eff = np.where(informative, xs, 0.0)
    ms_eff = np.where(informative, ms, 0.0)
    if q <= 1.0:
        # Without a finite population mean the posterior mean exists only through the data;
        # fall back to the observed mean rather than inventing one.
        return np.asarray(np.where(informative, ms_eff, 0.0), dtype=np.float64)
    return np.asarray(p * (g + xs_eff * ms_eff) / (p * xs_eff + q - 1.0), dtype=np.float64)


def simulate_mean_spend(
    params: GammaGammaParams, x: ArrayLike, rng: np.random.Generator
) -> FloatArray:
    """Draw each customer's mean spend over x transactions (NaN when x == 0)."""
    xs = np.asarray(x, dtype=np.float64)
    nu = rng.gamma(params.q, 1.0 / params.gamma, size=xs.shape)
    has = xs > 0
    out = np.full(xs.shape, np.nan)
    # The sum of x iid Gamma(p, nu) values is Gamma(p x, nu); divide by x for the mean.
    out[has] = rng.gamma(params.p * xs[has], 1.0 / nu[has]) / xs[has]
    return out
