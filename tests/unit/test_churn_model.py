"""Churn/value model: published CDNOW estimates, likelihood maths and the pure scoring rules."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special  # type: ignore[import-untyped]

from tierflow_classifier.domain.churn import bgnbd, gamma_gamma
from tierflow_classifier.domain.churn.bgnbd import BgNbdParams
from tierflow_classifier.domain.churn.fit import (
    FittedModel,
    fit_churn_weights,
    fit_model,
    sufficient_statistics,
)
from tierflow_classifier.domain.churn.gamma_gamma import GammaGammaParams
from tierflow_classifier.domain.churn.score import (
    TERMS,
    ChurnConfig,
    ChurnLevels,
    ChurnWeights,
    CustomerStats,
    ServiceSignals,
    churn_terms,
    combine,
    frequency_decline,
    score_customer,
)

CDNOW_PARAMS = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
CDNOW_SPEND = GammaGammaParams(p=6.25, q=3.74, gamma=15.44)


def cdnow_file(name: str) -> Path:
    # Located without importing the archived lifetimes package: only its data files are used.
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lifetimes data files not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.exists():
        pytest.skip(f"{name} not shipped with this lifetimes version")
    return path


def cdnow_sample_summary() -> tuple[np.ndarray, ...]:
    raw = np.loadtxt(cdnow_file("CDNOW_sample.txt"), dtype=np.float64)
    ymd = raw[:, 2].astype(np.int64)
    dates = np.array(
        [f"{v // 10000:04d}-{v // 100 % 100:02d}-{v % 100:02d}" for v in ymd], dtype="datetime64[D]"
    )
    weeks = (dates - np.datetime64("1997-01-01")).astype(np.float64) / 7.0
    s = sufficient_statistics(raw[:, 1].astype(np.int64), weeks, raw[:, 4], 272.0 / 7.0)
    return s.customer_ids, s.x, s.t_x, s.T, s.mean_spend


def model_for(params: BgNbdParams, spend: GammaGammaParams | None = CDNOW_SPEND) -> FittedModel:
    fitted = bgnbd.BgNbdFit(params=params, log_likelihood=0.0, iterations=0, converged=True)
    return FittedModel(
        version="test",
        time_unit_days=7.0,
        variant=params.variant,
        bgnbd=fitted
        if params.variant == "bgnbd"
        else replace(fitted, params=replace(params, variant="bgnbd")),
        mbgnbd=fitted if params.variant == "mbgnbd" else None,
        spend=spend,
        spend_log_likelihood=None,
        n_customers=0,
        n_spend_customers=0,
        fit_seconds=0.0,
    )


# ---------------------------------------------------------------- published estimates


def test_cdnow_sample_statistics_match_the_published_summary() -> None:
    _, x, t_x, T, mean_spend = cdnow_sample_summary()
    published = np.loadtxt(
        cdnow_file("cdnow_customers_summary_with_transactions.csv"), delimiter=",", skiprows=1
    )
    assert x.size == 2357
    assert np.array_equal(x, published[:, 1])
    # The published file rounds to two decimals.
    assert np.max(np.abs(t_x - published[:, 2])) < 0.005 + 1e-9
    assert np.max(np.abs(T - published[:, 3])) < 0.005 + 1e-9
    has = x > 0
    assert np.max(np.abs(mean_spend[has] - published[has, 4])) < 0.005 + 1e-9


def test_cdnow_sample_fit_reproduces_fader_hardie_lee_2005() -> None:
    _, x, t_x, T, mean_spend = cdnow_sample_summary()
    model = fit_model(x, t_x, T, mean_spend, time_unit_days=7.0, variant="bgnbd")
    p = model.bgnbd.params
    # The paper reports three decimals; half a unit in the last place is the honest tolerance.
    assert p.r == pytest.approx(0.243, abs=5e-4)
    assert p.alpha == pytest.approx(4.414, abs=5e-4)
    assert p.a == pytest.approx(0.793, abs=5e-4)
    assert p.b == pytest.approx(2.426, abs=5e-4)
    assert model.bgnbd.log_likelihood == pytest.approx(-9582.4, abs=0.05)
    assert model.bgnbd.converged
    assert model.spend is not None
    assert model.spend.p == pytest.approx(6.25, abs=5e-3)
    assert model.spend.q == pytest.approx(3.74, abs=5e-3)
    assert model.spend.gamma == pytest.approx(15.44, abs=5e-3)
    assert model.n_customers == 2357


# ---------------------------------------------------------------- likelihood maths


@pytest.mark.parametrize("variant", ["bgnbd", "mbgnbd"])
def test_analytic_gradient_matches_finite_differences(variant: bgnbd.Variant) -> None:
    rng = np.random.default_rng(3)
    T = rng.uniform(20, 40, 3000)
    x, t_x = bgnbd.simulate(replace(CDNOW_PARAMS, variant=variant), T, rng)
    data = bgnbd.prepare(x, t_x, T)
    k = 1 if variant == "mbgnbd" else 0
    point = np.log([0.4, 3.0, 1.2, 1.7])
    _, grad = bgnbd.negative_log_likelihood(point, data, k)
    numeric = optimize.approx_fprime(
        point, lambda u: bgnbd.negative_log_likelihood(u, data, k)[0], 1e-7
    )
    assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-7)


def test_vectorised_likelihood_equals_the_fit_objective() -> None:
    rng = np.random.default_rng(4)
    T = rng.uniform(1, 40, 500)
    x, t_x = bgnbd.simulate(CDNOW_PARAMS, T, rng)
    value, _ = bgnbd.negative_log_likelihood(
        np.log([0.243, 4.414, 0.793, 2.426]), bgnbd.prepare(x, t_x, T), 0
    )
    assert value == pytest.approx(-bgnbd.log_likelihood(CDNOW_PARAMS, x, t_x, T).mean())


def test_gamma_gamma_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(1, 10, 2000).astype(np.float64)
    ms = gamma_gamma.simulate_mean_spend(CDNOW_SPEND, x, rng)
    args = (x, ms, np.log(ms), np.log(x))
    point = np.log([3.0, 2.5, 10.0])
    _, grad = gamma_gamma._nll(point, *args)
    numeric = optimize.approx_fprime(point, lambda u: gamma_gamma._nll(u, *args)[0], 1e-7)
    assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-7)


def paper_expected_purchases(p: BgNbdParams, t: float, x: float, t_x: float, T: float) -> float:
    """Fader-Hardie-Lee (2005) eq. 10 as printed (b shifted by k for MBG/NBD)."""
    b = p.b + p.k
    hyp = special.hyp2f1(p.r + x, b + x, p.a + b + x - 1, t / (p.alpha + T + t))
    body = (
        (p.a + b + x - 1) / (p.a - 1) * (1 - hyp * ((p.alpha + T) / (p.alpha + T + t)) ** (p.r + x))
    )
    dead = (x + p.k > 0) * p.a / (b + x - 1) * ((p.alpha + T) / (p.alpha + t_x)) ** (p.r + x)
    return float(body / (1 + dead))


@pytest.mark.parametrize("variant", ["bgnbd", "mbgnbd"])
@pytest.mark.parametrize(
    ("x", "t_x", "T", "t"),
    [(0, 0, 38.9, 39), (1, 2, 38.9, 39), (3, 30, 38.9, 10), (12, 38, 39, 52)],
)
def test_euler_form_equals_the_published_formula(
    variant: bgnbd.Variant, x: float, t_x: float, T: float, t: float
) -> None:
    p = replace(CDNOW_PARAMS, variant=variant)
    ours = float(bgnbd.expected_purchases(p, t, x, t_x, T))
    assert ours == pytest.approx(paper_expected_purchases(p, t, x, t_x, T), rel=1e-9)


@pytest.mark.parametrize("variant", ["bgnbd", "mbgnbd"])
def test_conditional_predictions_agree_with_simulation(variant: bgnbd.Variant) -> None:
    """Averaged over customers, conditional predictions must equal what the model generates."""
    p = replace(CDNOW_PARAMS, variant=variant)
    rng = np.random.default_rng(11)
    n, T, t = 200_000, np.full(200_000, 30.0), 20.0
    lam = rng.gamma(p.r, 1.0 / p.alpha, n)
    lifetime = rng.geometric(rng.beta(p.a, p.b, n)) - p.k
    before, after = rng.poisson(lam * T), rng.poisson(lam * t)
    x = np.minimum(lifetime, before)
    future = np.where(lifetime > before, np.minimum(lifetime - before, after), 0)
    frac = np.zeros(n)
    has = x > 0
    frac[has] = rng.beta(x[has], before[has] - x[has] + 1)
    t_x = frac * T
    predicted = bgnbd.expected_purchases(p, t, x, t_x, T)
    assert predicted.sum() == pytest.approx(future.sum(), rel=0.02)
    assert bgnbd.p_no_purchase(p, t, x, t_x, T).mean() == pytest.approx(
        (future == 0).mean(), abs=0.005
    )
    assert float(bgnbd.expected_purchases_new_customer(p, 30.0)) == pytest.approx(
        x.mean(), rel=0.02
    )


@pytest.mark.parametrize("variant", ["bgnbd", "mbgnbd"])
def test_fit_recovers_simulated_parameters(variant: bgnbd.Variant) -> None:
    truth = BgNbdParams(r=0.5, alpha=6.0, a=0.9, b=2.0, variant=variant)
    rng = np.random.default_rng(7)
    T = rng.uniform(26, 39, 200_000)
    x, t_x = bgnbd.simulate(truth, T, rng)
    fitted = bgnbd.fit_bgnbd(x, t_x, T, variant).params
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.1), name


def test_fit_rejects_impossible_statistics() -> None:
    with pytest.raises(ValueError, match="t_x"):
        bgnbd.fit_bgnbd([1, 2], [5.0, 1.0], [4.0, 3.0])
    with pytest.raises(ValueError, match="zero customers"):
        bgnbd.fit_bgnbd([], [], [])


# ---------------------------------------------------------------- properties

params_strategy = st.builds(
    BgNbdParams,
    r=st.floats(0.05, 5.0),
    alpha=st.floats(0.5, 50.0),
    a=st.floats(0.1, 5.0),
    b=st.floats(0.1, 10.0),
    variant=st.sampled_from(["bgnbd", "mbgnbd"]),
)


@st.composite
def customer(draw: st.DrawFn) -> tuple[int, float, float]:
    T = draw(st.floats(0.0, 200.0))
    x = draw(st.integers(0, 60))
    t_x = 0.0 if x == 0 else draw(st.floats(0.0, T))
    return x, t_x, T


@settings(max_examples=300, deadline=None)
@given(params_strategy, customer(), st.floats(0.1, 150.0))
def test_probabilities_are_probabilities(
    p: BgNbdParams, c: tuple[int, float, float], t: float
) -> None:
    x, t_x, T = c
    alive = float(bgnbd.p_alive(p, x, t_x, T))
    quiet = float(bgnbd.p_no_purchase(p, t, x, t_x, T))
    assert 0.0 <= alive <= 1.0
    assert 0.0 <= quiet <= 1.0
    assert quiet >= 1.0 - alive - 1e-12  # a dropped-out customer never buys


@settings(max_examples=300, deadline=None)
@given(params_strategy, st.integers(1, 60), st.floats(1.0, 200.0), st.floats(0.0, 1.0))
def test_longer_silence_lowers_p_alive(p: BgNbdParams, x: int, T: float, share: float) -> None:
    recent, older = T, share * T
    assert float(bgnbd.p_alive(p, x, older, T)) <= float(bgnbd.p_alive(p, x, recent, T)) + 1e-12


@settings(max_examples=200, deadline=None)
@given(params_strategy, st.floats(0.0, 200.0), st.floats(0.0, 100.0))
def test_one_time_buyers(p: BgNbdParams, T: float, more: float) -> None:
    young, old = float(bgnbd.p_alive(p, 0, 0, T)), float(bgnbd.p_alive(p, 0, 0, T + more))
    if p.variant == "bgnbd":
        assert young == old == 1.0  # the limitation MBG/NBD exists to fix
    else:
        assert 0.0 < old <= young < 1.0


@settings(max_examples=300, deadline=None)
@given(params_strategy, customer(), st.floats(0.0, 100.0), st.floats(0.0, 100.0))
def test_expected_purchases_grow_with_the_horizon(
    p: BgNbdParams, c: tuple[int, float, float], t: float, more: float
) -> None:
    x, t_x, T = c
    short = float(bgnbd.expected_purchases(p, t, x, t_x, T))
    long = float(bgnbd.expected_purchases(p, t + more, x, t_x, T))
    assert math.isfinite(long)
    assert 0.0 <= short <= long * (1 + 1e-9) + 1e-12
    assert (
        float(bgnbd.p_no_purchase(p, t + more, x, t_x, T))
        <= float(bgnbd.p_no_purchase(p, t, x, t_x, T)) + 1e-12
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 50), st.floats(0.5, 5000.0))
def test_spend_shrinks_towards_the_population_mean(x: int, observed: float) -> None:
    estimate = float(gamma_gamma.expected_spend(CDNOW_SPEND, x, observed))
    low, high = sorted([observed, CDNOW_SPEND.population_mean])
    assert low - 1e-9 <= estimate <= high + 1e-9


def test_spend_without_repeat_purchases_is_the_population_mean() -> None:
    assert float(gamma_gamma.expected_spend(CDNOW_SPEND, 0, math.nan)) == pytest.approx(
        CDNOW_SPEND.population_mean
    )


signals_strategy = st.builds(
    ServiceSignals,
    open_complaints=st.integers(0, 20),
    satisfaction=st.none() | st.floats(0.0, 1.0),
    frequency_decline=st.none() | st.floats(0.0, 1.0),
)


@st.composite
def stats_strategy(draw: st.DrawFn) -> CustomerStats:
    x, t_x, T = draw(customer())
    return CustomerStats(
        x=x,
        t_x_days=t_x * 7,
        T_days=T * 7,
        mean_spend=draw(st.none() | st.floats(0.5, 1000.0)) if x else None,
        total_spend=draw(st.none() | st.floats(-100.0, 1e5)),
    )


@settings(max_examples=300, deadline=None)
@given(params_strategy, stats_strategy(), signals_strategy, st.floats(1.0, 730.0))
def test_scores_are_consistent_and_explained(
    p: BgNbdParams, stats: CustomerStats, signals: ServiceSignals, horizon: float
) -> None:
    config = ChurnConfig(horizon_days=horizon)
    score = score_customer(model_for(p), stats, signals, config)
    assert 0.0 <= score.probability <= 1.0
    assert 0.0 <= score.value_at_risk <= score.clv + 1e-9
    assert score.value_at_risk == pytest.approx(score.clv * score.probability)
    assert score.level == config.levels.level(score.probability)
    contributions = score.explanation["contributions"]
    assert set(contributions) == {"intercept", *TERMS}
    total = math.fsum(c["contribution"] for c in contributions.values())
    assert total == pytest.approx(score.logit, abs=1e-9)
    assert score.probability == pytest.approx(1.0 / (1.0 + math.exp(-score.logit)), abs=1e-12)
    json.dumps(score.explanation)  # every explanation can be stored and published as-is


@settings(max_examples=200, deadline=None)
@given(params_strategy, stats_strategy(), signals_strategy)
def test_a_new_complaint_never_lowers_the_risk(
    p: BgNbdParams, stats: CustomerStats, signals: ServiceSignals
) -> None:
    model = model_for(p)
    before = score_customer(model, stats, signals)
    worse = replace(signals, open_complaints=signals.open_complaints + 1)
    assert score_customer(model, stats, worse).probability >= before.probability


def test_explanation_names_inputs_and_contributions() -> None:
    score = score_customer(
        model_for(CDNOW_PARAMS),
        CustomerStats(x=2, t_x_days=120.0, T_days=270.0, mean_spend=30.0, total_spend=95.0),
        ServiceSignals(open_complaints=1, satisfaction=0.3, frequency_decline=0.5),
        ChurnConfig(horizon_days=90.0),
    )
    inputs = score.explanation["inputs"]
    assert inputs["x"] == 2
    assert inputs["open_complaints"] == 1
    assert inputs["satisfaction"] == 0.3
    c = score.explanation["contributions"]
    assert c["open_complaints"]["value"] == pytest.approx(math.log(2))
    assert c["low_satisfaction"]["value"] == pytest.approx(0.5)  # (0.6 - 0.3) / 0.6
    assert c["model"]["value"] == pytest.approx(
        math.log(score.p_no_purchase_model / (1 - score.p_no_purchase_model))
    )
    assert score.explanation["model_version"] == "test"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 30), st.floats(1.0, 365.0), st.integers(0, 30), st.floats(0.0, 365.0))
def test_frequency_decline_is_a_fraction(
    recent: int, recent_days: float, earlier: int, earlier_days: float
) -> None:
    value = float(frequency_decline(recent, recent_days, earlier, earlier_days))
    assert 0.0 <= value <= 1.0
    if recent == 0 and earlier > 0 and earlier_days > 0:
        assert value == 1.0


def test_levels_follow_the_configured_thresholds() -> None:
    levels = ChurnLevels(medium=0.2, high=0.5, critical=0.9)
    assert [levels.level(p) for p in (0.1, 0.2, 0.7, 0.95)] == [
        "low",
        "medium",
        "high",
        "critical",
    ]
    with pytest.raises(ValueError, match="medium < high"):
        ChurnLevels(medium=0.6, high=0.5, critical=0.9)


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="t_x_days"):
        CustomerStats(x=1, t_x_days=10.0, T_days=5.0)
    with pytest.raises(ValueError, match="t_x_days must be 0"):
        CustomerStats(x=0, t_x_days=1.0, T_days=5.0)
    with pytest.raises(ValueError, match="satisfaction"):
        ServiceSignals(satisfaction=4.0)
    with pytest.raises(ValueError, match="horizons"):
        ChurnConfig(horizon_days=0)


# ---------------------------------------------------------------- fitting glue


def test_sufficient_statistics_merge_same_day_orders() -> None:
    s = sufficient_statistics(
        ["a", "a", "a", "a", "b", "c", "c"],
        [0.0, 0.0, 3.0, 9.0, 2.0, 5.0, 11.0],
        [10.0, 5.0, 20.0, 40.0, 7.0, 1.0, 99.0],
        calibration_end=10.0,
    )
    assert list(s.customer_ids) == ["a", "b", "c"]
    assert list(s.x) == [2.0, 0.0, 0.0]  # c's second order is after the calibration end
    assert list(s.t_x) == [9.0, 0.0, 0.0]
    assert list(s.T) == [10.0, 8.0, 5.0]
    assert s.mean_spend[0] == pytest.approx(30.0)  # repeat orders only: (20 + 40) / 2
    assert np.isnan(s.mean_spend[1])


def test_fitted_model_round_trips_and_is_versioned_by_content() -> None:
    rng = np.random.default_rng(2)
    T = rng.uniform(20, 39, 5000)
    x, t_x = bgnbd.simulate(CDNOW_PARAMS, T, rng)
    spend = gamma_gamma.simulate_mean_spend(CDNOW_SPEND, x, rng)
    model = fit_model(x, t_x, T, spend, time_unit_days=7.0)
    again = fit_model(x, t_x, T, spend, time_unit_days=7.0)
    assert model.version == again.version
    assert model.version.startswith("churn-")
    assert model.variant in {"bgnbd", "mbgnbd"}
    assert model.log_likelihood == max(
        model.bgnbd.log_likelihood, model.mbgnbd.log_likelihood if model.mbgnbd else -math.inf
    )
    restored = FittedModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert restored == model
    other = fit_model(x[:-1], t_x[:-1], T[:-1], spend[:-1], time_unit_days=7.0)
    assert other.version != model.version


def test_churn_weights_recover_a_known_logistic_rule() -> None:
    rng = np.random.default_rng(9)
    n = 50_000
    p0 = rng.uniform(0.05, 0.95, n)
    spend = rng.exponential(100.0, n)
    decline = rng.uniform(0, 1, n)
    terms = churn_terms(
        p0,
        total_spend=spend,
        open_complaints=0,
        satisfaction=np.full(n, np.nan),
        decline=decline,
        satisfaction_floor=0.6,
    )
    truth = ChurnWeights(intercept=0.4, model=1.2, spend=-0.2, frequency_decline=0.8)
    churned = rng.uniform(size=n) < special.expit(combine(terms, truth))
    prior = ChurnWeights(open_complaints=0.9, low_satisfaction=1.1)
    fitted = fit_churn_weights(terms, churned, prior, l2=0.0)
    assert fitted.model == pytest.approx(1.2, abs=0.1)
    assert fitted.spend == pytest.approx(-0.2, abs=0.05)
    assert fitted.frequency_decline == pytest.approx(0.8, abs=0.15)
    # Terms without variation in the data keep their prior rather than an arbitrary value.
    assert fitted.open_complaints == 0.9
    assert fitted.low_satisfaction == 1.1


def test_service_signal_weights_are_never_fitted_negative() -> None:
    rng = np.random.default_rng(10)
    n = 20_000
    decline = rng.uniform(0, 1, n)
    terms = churn_terms(
        np.full(n, 0.5),
        total_spend=np.zeros(n),
        open_complaints=0,
        satisfaction=np.full(n, np.nan),
        decline=decline,
        satisfaction_floor=0.6,
    )
    # Data where a falling frequency would "predict" loyalty: the fit must clamp at 0.
    churned = rng.uniform(size=n) < special.expit(-2.0 * decline)
    assert fit_churn_weights(terms, churned).frequency_decline == 0.0


# --- the classifier's scalar path against the vectorised reference ----------------------


@settings(max_examples=500, deadline=None)
@given(
    params_strategy,
    customer(),
    st.floats(0.1, 150.0),
    st.floats(-500.0, 1e6),
    st.integers(0, 5),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_the_scalar_churn_probability_is_the_vectorised_one(
    p: BgNbdParams,
    c: tuple[int, float, float],
    t: float,
    spend: float,
    complaints: int,
    satisfaction: float | None,
) -> None:
    from tierflow_classifier.domain.churn.score import ChurnConfig, churn_terms, combine  # noqa: PLC0415
    from tierflow_classifier.domain.churn_features import (  # noqa: PLC0415
        combined_logit,
        p_no_purchase_one,
    )

    x, t_x, T = c
    reference = float(bgnbd.p_no_purchase(p, t, x, t_x, T))
    assert math.isclose(p_no_purchase_one(p, t, x, t_x, T), reference, rel_tol=1e-9, abs_tol=1e-12)
    config = ChurnConfig()
    terms = churn_terms(
        reference,
        total_spend=spend,
        open_complaints=complaints,
        satisfaction=math.nan if satisfaction is None else satisfaction,
        decline=math.nan,
        satisfaction_floor=config.satisfaction_floor,
    )
    expected = float(combine(terms, config.weights))
    got = combined_logit(reference, spend, complaints, satisfaction, config)
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
