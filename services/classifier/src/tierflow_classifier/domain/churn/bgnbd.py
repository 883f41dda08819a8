"""BG/NBD and MBG/NBD purchase models: likelihood, maximum-likelihood fit and per-customer rules.

Both models (Fader, Hardie & Lee 2005; Batislam, Denizel & Filiztekin 2007) say: while alive, a
customer buys at Poisson rate ``lambda ~ Gamma(r, alpha)``; a customer may drop out with
probability ``p ~ Beta(a, b)`` right after each repeat purchase (BG/NBD) or also right after the
first purchase (MBG/NBD). The only difference is an offset ``k`` (0 or 1) in the number of
dropout opportunities, so one set of formulas with ``b + x + k`` serves both; with ``k = 1``
one-time buyers get a P(alive) below 1 that falls with their age, which BG/NBD cannot express.

Everything is vectorised over customers and depends only on the sufficient statistics
``x`` (repeat purchases), ``t_x`` (time of the last purchase since the first) and ``T`` (age),
in the time unit the model was fitted in. No I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special  # type: ignore[import-untyped]

Variant = Literal["bgnbd", "mbgnbd"]
FloatArray = NDArray[np.float64]

# Keeps the optimiser inside a region where gammaln/digamma stay finite; real stores sit far
# inside it (CDNOW: log-parameters between -1.5 and 1.5).
_LOG_BOUND = 12.0


@dataclass(frozen=True)
class BgNbdParams:
    r: float
    alpha: float
    a: float
    b: float
    variant: Variant = "bgnbd"

    @property
    def k(self) -> int:
        return 1 if self.variant == "mbgnbd" else 0


@dataclass(frozen=True)
class BgNbdFit:
    params: BgNbdParams
    log_likelihood: float
    iterations: int
    converged: bool


def _arrays(*values: ArrayLike) -> tuple[FloatArray, ...]:
    return tuple(np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in values)))


def log_likelihood(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
    """Per-customer log-likelihood of (x, t_x, T): shared factor + log(alive + dropped-at-t_x)."""
    xs, ts, Ts = _arrays(x, t_x, T)
    r, alpha, a, b, k = params.r, params.alpha, params.a, params.b, params.k
    has_dead = (xs + k) > 0
    lbeta = special.betaln(a, b)
    shared = special.gammaln(r + xs) - special.gammaln(r) + r * math.log(alpha)
    alive = special.betaln(a, b + xs + k) - lbeta - (r + xs) * np.log(alpha + Ts)
    # b + x + k - 1 can be <= 0 only where no dropout was possible; feed a harmless value there.
    safe_b = np.where(has_dead, b + xs + k - 1.0, 1.0)
    dead = special.betaln(a + 1.0, safe_b) - lbeta - (r + xs) * np.log(alpha + ts)
    dead = np.where(has_dead, dead, -np.inf)
    return np.asarray(shared + np.logaddexp(alive, dead), dtype=np.float64)


@dataclass(frozen=True)
class PreparedData:
    """Customers with the repeat counts factored out: x takes few distinct values, so every
    term that depends on x alone (gammaln, betaln, digamma) is computed once per value."""

    t_x: FloatArray
    T: FloatArray
    x_values: FloatArray
    x_index: NDArray[np.intp]
    x_counts: FloatArray

    @property
    def n(self) -> int:
        return int(self.T.size)


def prepare(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> PreparedData:
    xs, ts, Ts = _arrays(x, t_x, T)
    values, index, counts = np.unique(xs.ravel(), return_inverse=True, return_counts=True)
    return PreparedData(
        t_x=ts.ravel(),
        T=Ts.ravel(),
        x_values=values,
        x_index=index.astype(np.intp),
        x_counts=counts.astype(np.float64),
    )


def negative_log_likelihood(
    log_params: FloatArray, data: PreparedData, k: int
) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood and its gradient with respect to the log-parameters.

    The gradient is analytic (digamma), which is what keeps a fit on a million customers to a
    few dozen likelihood evaluations instead of five times as many with finite differences.
    """
    r, alpha, a, b = (float(v) for v in np.exp(log_params))
    u, idx, cnt = data.x_values, data.x_index, data.x_counts
    has_dead_u = (u + k) > 0
    safe_b = np.where(has_dead_u, b + u + k - 1.0, 1.0)
    lbeta = special.betaln(a, b)
    # Per distinct x: the x-only parts of the three log-terms and of their derivatives.
    a1_u = special.gammaln(r + u) - special.gammaln(r) + r * math.log(alpha)
    b2_u = special.betaln(a, b + u + k) - lbeta
    b3_u = np.where(has_dead_u, special.betaln(a + 1.0, safe_b) - lbeta, -np.inf)
    psi = special.digamma
    psi_ab = float(psi(a + b))
    common_ab_u = psi_ab - psi(a + b + u + k)
    d_b2_u = common_ab_u - psi(b) + psi(b + u + k)
    d_b3_u = np.where(has_dead_u, common_ab_u - psi(b) + psi(safe_b), 0.0)
    d_r_u = psi(r + u) - psi(r) + math.log(alpha)

    rx = r + u[idx]
    log_aT = np.log(alpha + data.T)
    log_at = np.log(alpha + data.t_x)
    a2 = b2_u[idx] - rx * log_aT
    a3 = b3_u[idx] - rx * log_at
    mix = np.logaddexp(a2, a3)
    w3 = np.exp(a3 - mix)
    w2 = 1.0 - w3
    total_ll = float(np.dot(cnt, a1_u) + mix.sum())

    d_r = float(np.dot(cnt, d_r_u) - np.dot(w2, log_aT) - np.dot(w3, log_at))
    d_alpha = float(
        data.n * r / alpha - np.sum(rx * (w2 / (alpha + data.T) + w3 / (alpha + data.t_x)))
    )
    d_a = float(np.dot(cnt, common_ab_u) + w3.sum() / a)
    d_b = float(np.dot(w2, d_b2_u[idx]) + np.dot(w3, d_b3_u[idx]))
    n = float(data.n)
    grad = -np.array([r * d_r, alpha * d_alpha, a * d_a, b * d_b], dtype=np.float64) / n
    return -total_ll / n, grad


def fit_bgnbd(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    variant: Variant = "bgnbd",
    initial: BgNbdParams | None = None,
) -> BgNbdFit:
    """Maximum-likelihood population parameters (L-BFGS-B on log-parameters)."""
    xs, ts, Ts = _arrays(x, t_x, T)
    if xs.size == 0:
        raise ValueError("cannot fit a purchase model on zero customers")
    if np.any(xs < 0) or np.any(ts < 0) or np.any(ts > Ts) or np.any((xs == 0) & (ts != 0)):
        raise ValueError("need x >= 0, 0 <= t_x <= T, and t_x == 0 when x == 0")
    k = 1 if variant == "mbgnbd" else 0
    if initial is None:
        # r = 1 and alpha = 1 / (mean purchase rate) puts the start at the right time scale
        # whatever unit (days, weeks) the caller uses.
        rate = max(float(xs.mean()), 0.1) / max(float(Ts.mean()), 1e-9)
        start = np.log([1.0, 1.0 / rate, 1.0, 1.0])
    else:
        start = np.log([initial.r, initial.alpha, initial.a, initial.b])
    # Imported here: only the fitting job needs the optimiser, and it costs a scoring-only
    # process (the classifier) about 12 MB of resident memory.
    from scipy import optimize  # noqa: PLC0415

    result = optimize.minimize(
        negative_log_likelihood,
        start,
        args=(prepare(xs, ts, Ts), k),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 4,
        options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9},
    )
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    params = BgNbdParams(r=r, alpha=alpha, a=a, b=b, variant=variant)
    return BgNbdFit(
        params=params,
        log_likelihood=float(-result.fun * xs.size),
        iterations=int(result.nit),
        converged=bool(result.success),
    )


def _log_dead_odds(
    params: BgNbdParams, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    """log(P(dropped out at t_x) / P(alive at T)) given the data; -inf when dropout impossible."""
    r, alpha, a, b, k = params.r, params.alpha, params.a, params.b, params.k
    has_dead = (x + k) > 0
    safe_b = np.where(has_dead, b + x + k - 1.0, 1.0)
    odds = math.log(a) - np.log(safe_b) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    return np.asarray(np.where(has_dead, odds, -np.inf), dtype=np.float64)


def p_alive(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
    """P(the customer is still alive at T | x, t_x, T)."""
    xs, ts, Ts = _arrays(x, t_x, T)
    return np.asarray(special.expit(-_log_dead_odds(params, xs, ts, Ts)), dtype=np.float64)


def expected_purchases(
    params: BgNbdParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """E[number of purchases in (T, T + t] | x, t_x, T].

    Alive customers have posterior ``lambda ~ Gamma(r + x, alpha + T)`` and
    ``p ~ Beta(a, b + x + k)``; E[(1 - exp(-lambda p t)) / p] over that posterior is the paper's
    Gauss hypergeometric expression. We use its Euler transform,
    ``(1-z)^(r+x) 2F1(r+x, b'; c; z) = (1-z)^(a-1) 2F1(c-r-x, a-1; c; z)``, whose parameters
    stay bounded as x grows, so frequent buyers neither overflow nor lose precision.
    """
    tt, xs, ts, Ts = _arrays(t, x, t_x, T)
    r, alpha, b = params.r, params.alpha, params.b
    # The closed form has a removable singularity at a = 1; step just beside it.
    a = params.a if abs(params.a - 1.0) > 1e-7 else 1.0 + 1e-7
    b_post = b + xs + params.k
    c = a + b_post - 1.0
    z = tt / (alpha + Ts + tt)
    with np.errstate(all="ignore"):
        tail = np.exp((a - 1.0) * np.log1p(-z)) * special.hyp2f1(c - r - xs, a - 1.0, c, z)
        alive_mean = c / (a - 1.0) * (1.0 - tail)
    # Where the series breaks down numerically (0 * inf near a = 1 or huge x), fall back to the
    # no-dropout Poisson mean, an upper bound that is tight exactly in those regimes.
    fallback = (r + xs) / (alpha + Ts) * tt
    alive_mean = np.where(np.isfinite(alive_mean) & (alive_mean >= 0), alive_mean, fallback)
    alive = special.expit(-_log_dead_odds(params, xs, ts, Ts))
    return np.asarray(np.maximum(alive * alive_mean, 0.0), dtype=np.float64)


def expected_purchases_new_customer(params: BgNbdParams, t: ArrayLike) -> FloatArray:
    """E[repeat purchases in (0, t]] for a customer who has just made the first purchase."""
    tt = np.asarray(t, dtype=np.float64)
    zero = np.zeros_like(tt)
    return expected_purchases(params, tt, zero, zero, zero)


def p_no_purchase(
    params: BgNbdParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """P(no purchase in (T, T + t] | x, t_x, T).

    A dropped-out customer never buys; an alive one buys nothing in t with probability
    E[exp(-lambda t)] = ((alpha + T) / (alpha + T + t))^(r + x) under the alive posterior (a
    dropout can only follow a purchase, so p does not enter).
    """
    tt, xs, ts, Ts = _arrays(t, x, t_x, T)
    alive = special.expit(-_log_dead_odds(params, xs, ts, Ts))
    quiet = np.exp((params.r + xs) * (np.log(params.alpha + Ts) - np.log(params.alpha + Ts + tt)))
    return np.asarray(1.0 - alive * (1.0 - quiet), dtype=np.float64)


def simulate(
    params: BgNbdParams, T: ArrayLike, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Draw (x, t_x) for customers of ages T from the model itself (for tests and benchmarks).

    Exact and vectorised: the number of purchases a customer would make before dropping out is
    geometric, the purchases in [0, T] while alive are Poisson(lambda T), and the time of the
    x-th of n uniform arrivals is T times a Beta(x, n - x + 1) order statistic.
    """
    Ts = np.asarray(T, dtype=np.float64)
    lam = rng.gamma(params.r, 1.0 / params.alpha, size=Ts.shape)
    p = rng.beta(params.a, params.b, size=Ts.shape)
    # numpy's geometric counts trials up to and including the first success (>= 1).
    lifetime_purchases = rng.geometric(np.clip(p, 1e-12, 1.0)) - params.k
    arrivals = rng.poisson(lam * Ts)
    x = np.minimum(lifetime_purchases, arrivals)
    has = x > 0
    frac = np.zeros_like(Ts)
    frac[has] = rng.beta(x[has], arrivals[has] - x[has] + 1)
    return x.astype(np.float64), frac * Ts
