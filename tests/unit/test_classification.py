"""The classifier's pure step: every dimension, explanations, hysteresis, time-driven
transitions (timers, rolling windows) and order-independence (property tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import VALUE_TIER, apply
from tierflow_classifier.domain.churn import FittedModel, fit_model
from tierflow_classifier.domain.classify import Outside, catch_up, classify
from tierflow_classifier.domain.model import (
    CustomerEvent,
    CustomerState,
    EventMeta,
    Feedback,
    Interaction,
    ProfilePatch,
    Purchase,
    Refund,
)
from tierflow_classifier.domain.population import PopulationStats, abc_thresholds, quintile
from tierflow_classifier.domain.rules import RefundPolicy, RuleSet
from tierflow_classifier.exceptions import UnprocessableEvent

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "classifier.yaml")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def meta(n: int, days: float = 0) -> EventMeta:
    return EventMeta(
        source="shop", event_id=f"e{n}", customer_id="c", time=T0 + timedelta(days=days)
    )


def buy(n: int, amount: str, currency: str = "USD", *, days: float = 0) -> Purchase:
    return Purchase(meta(n, days), order_id=str(n), amount=Decimal(amount), currency=currency)


def run(
    events: Sequence[CustomerEvent], rules: RuleSet = RULES
) -> tuple[CustomerState, list[tuple[str, str]]]:
    """Apply events in order, firing due deadlines first, as the consumer does."""
    state: CustomerState | None = None
    changes: list[tuple[str, str]] = []
    for e in events:
        if state is not None:
            state, fired = catch_up(state, rules, until=e.meta.time)
            changes += [(c.dimension, c.to.label) for c in fired]
        state, new = apply(state, e, rules)
        changes += [(c.dimension, c.to.label) for c in new]
    assert state is not None
    return state, changes


def labels(changes: list[tuple[str, str]], dimension: str) -> list[str]:
    return [label for d, label in changes if d == dimension]


def advance(state: CustomerState, days: float) -> tuple[CustomerState, list[tuple[str, str]]]:
    new, fired = catch_up(state, RULES, until=T0 + timedelta(days=days))
    return new, [(c.dimension, c.to.label) for c in fired]


def test_first_purchase_classifies_every_dimension_with_explanations() -> None:
    state, changes = run([buy(1, "129.90")])
    dims = state.dimensions
    assert {d: a.label for d, a in dims.items()} == {
        "value_tier": "regular",
        "lifecycle": "new",
        "behaviour": "low_frequency",
        "loyalty": "ordinary",
        "needs": "product_focused",
        "problem": "none",
        "care_contact": "none",
        "geography": "unknown",
        "industry": "unknown",
        "company_size": "unknown",
        # Relative classes wait for the first population statistics.
        "abc": "unscored",
        "rfm": "unscored",
        "churn_risk": "unscored",
    }
    tier = dims[VALUE_TIER]
    assert tier.since == T0
    assert tier.rule == "value_tier.rules[2]"
    assert tier.explanation == {
        "expression": "purchases_lifetime >= 1",
        "inputs": {"purchases_lifetime": 1.0},
    }
    assert tier.rule_set_version == RULES.version
    # Every dimension carries its explanation, also the ones still at their default ...
    assert dims["loyalty"].rule == "loyalty.default"
    assert dims["loyalty"].reason == "no rule matched"
    # ... but only real information is a change: a first assignment of a default label
    # ("unknown", "unscored", "none", ...) is neither stored in the history nor published,
    # except the value tier, whose first assignment downstream services always receive.
    assert sorted(changes) == [
        ("behaviour", "low_frequency"),
        ("lifecycle", "new"),
        ("needs", "product_focused"),
        ("value_tier", "regular"),
    ]
    # The next instant time alone changes a class: onboarding ends after 30 days.
    assert state.next_review_at == T0 + timedelta(days=30)


def test_spend_climbs_through_important_to_vip() -> None:
    state, changes = run([buy(1, "600"), buy(2, "600", days=10), buy(3, "4000", days=20)])
    assert labels(changes, VALUE_TIER) == ["regular", "important", "VIP"]
    vip = state.dimensions[VALUE_TIER]
    assert vip.explanation["inputs"] == {
        "spend_window": 5200.0,
        "vip_spend": 5000.0,
        "orders_window": 3.0,
        "vip_orders": 3.0,
    }


def test_upgrades_are_immediate_but_downgrades_wait_out_the_min_dwell() -> None:
    state, changes = run([buy(1, "600"), buy(2, "600", days=2)])
    assert labels(changes, VALUE_TIER) == ["regular", "important"]
    refund = Refund(meta(3, 4), "2", Decimal("600"), "USD")
    state, changes = run([buy(1, "600"), buy(2, "600", days=2), refund])
    assert labels(changes, VALUE_TIER) == ["regular", "important"]
    assert state.dimensions[VALUE_TIER].rule == "value_tier.rules[1]"
    assert state.next_review_at == T0 + timedelta(days=9)  # 7 days after the upgrade
    later, fired = advance(state, 9)
    assert labels(fired, VALUE_TIER) == ["regular"]
    assert later.dimensions[VALUE_TIER].since == T0 + timedelta(days=9)


def test_hysteresis_band_keeps_a_vip_near_the_threshold() -> None:
    base = [buy(1, "2000"), buy(2, "2000", days=10), buy(3, "1500", days=20)]
    vip, _ = run(base)
    assert vip.dimensions[VALUE_TIER].label == "VIP"
    within, _ = run([*base, Refund(meta(9, 40), "3", Decimal("900"), "USD")])  # 5500 -> 4600
    assert within.dimensions[VALUE_TIER].label == "VIP"
    assert within.dimensions[VALUE_TIER].rule == "value_tier.rules[0]"
    _below, changes = run([*base, Refund(meta(9, 40), "3", Decimal("1200"), "USD")])  # -> 4300
    assert labels(changes, VALUE_TIER)[-1] == "important"


def test_lifecycle_moves_with_time_alone() -> None:
    state, _ = run([buy(1, "50")])
    assert state.dimensions["lifecycle"].label == "new"
    state, fired = advance(state, 400)
    # Each transition happens at its own deadline, not at the instant it was computed.
    assert labels(fired, "lifecycle") == ["active", "at_risk", "churned"]
    assert state.dimensions["lifecycle"].since == T0 + timedelta(days=360)
    back, changes = run([buy(1, "50"), buy(2, "50", days=400)])
    assert labels(changes, "lifecycle") == ["new", "active", "at_risk", "churned", "reactivated"]
    back, more = catch_up(back, RULES, until=T0 + timedelta(days=431))
    assert [c.to.label for c in more if c.dimension == "lifecycle"] == ["active"]


def test_lifecycle_uses_the_customers_own_rhythm() -> None:
    weekly = [buy(i, "20", days=7 * i) for i in range(6)]
    state, _ = run(weekly)
    # Rhythm 7 days: at risk after 14 days of silence, churned after 28 (not 180 / 360).
    last = T0 + timedelta(days=35)
    assert state.next_review_at == last + timedelta(days=14)
    state, fired = advance(state, 35 + 29)
    assert labels(fired, "lifecycle")[-2:] == ["at_risk", "churned"]


def test_rolling_window_expiry_downgrades_without_any_event() -> None:
    state, _ = run([buy(1, "1500", days=0), buy(2, "10", days=200)])
    assert state.dimensions[VALUE_TIER].label == "important"
    state, fired = advance(state, 400)
    assert labels(fired, VALUE_TIER) == ["regular"]
    # January 2025 leaves the 12-month window when January 2026 begins.
    assert state.dimensions[VALUE_TIER].since == datetime(2026, 1, 1, tzinfo=UTC)


def test_complaint_opens_escalates_and_resolves() -> None:
    opened = Interaction(meta(1, 0), "complaint", complaint_id="T-1")
    state, changes = run([opened])
    assert labels(changes, "problem") == ["open_complaint"]
    state, fired = advance(state, 3.5)
    assert labels(fired, "problem") == ["escalated"]
    closed = Interaction(meta(2, 4), "complaint_resolved", complaint_id="T-1")
    state, changes = run([opened, closed])
    assert state.dimensions["problem"].label == "resolved"


@pytest.mark.parametrize(
    ("region", "label"),
    [
        ({"country": "CN", "province": "Zhejiang"}, "local"),
        ({"country": "CN", "province": "Sichuan"}, "out_of_town"),
        ({"country": "US"}, "overseas"),
    ],
)
def test_geography_against_the_home_region(region: dict[str, str], label: str) -> None:
    state, _ = run([ProfilePatch(meta(1), {"region": region})])
    assert state.dimensions["geography"].label == label


def test_profile_fields_label_industry_and_size() -> None:
    state, _ = run([ProfilePatch(meta(1), {"industry": "retail", "company_size": "10-49"})])
    assert state.dimensions["industry"].label == "retail"
    assert state.dimensions["company_size"].label == "10-49"


def test_needs_and_loyalty() -> None:
    coupons = [
        Purchase(meta(i, 10 * i), str(i), Decimal("10"), "USD", discounted=True) for i in range(3)
    ]
    state, _ = run(coupons)
    assert state.dimensions["needs"].label == "price_sensitive"
    referrals = [
        Interaction(meta(10 + i), "referral", referred_customer_id=f"f{i}") for i in (1, 2)
    ]
    state, _ = run([buy(1, "5"), *referrals])
    assert state.dimensions["loyalty"].label == "loyal"


def test_foreign_currency_is_converted_with_the_configured_rate() -> None:
    state, _ = run([buy(1, "100", "EUR")])
    assert state.net_spend_lifetime == Decimal("108.00")


def test_unknown_currency_is_unprocessable_with_the_field() -> None:
    with pytest.raises(UnprocessableEvent) as info:
        run([buy(1, "1", "XAU")])
    assert info.value.field == "data.currency"
    assert "XAU" in info.value.reason


amounts = st.decimals(min_value=0, max_value=100_000, places=2, allow_nan=False)


def event_strategy() -> st.SearchStrategy[CustomerEvent]:
    n = st.integers(0, 10_000)
    day = st.integers(0, 3650)
    purchases = st.builds(lambda i, d, a: buy(i, str(a), days=d), n, day, amounts)
    refunds = st.builds(lambda i, d, a: Refund(meta(i, d), "o", a, "USD"), n, day, amounts)
    interactions = st.builds(
        lambda i, d, k, c: Interaction(meta(i, d), k, complaint_id=c),
        n,
        day,
        st.sampled_from(["complaint", "complaint_resolved"]),
        st.sampled_from(["a", "b"]),
    )
    feedback = st.builds(lambda i, d, s: Feedback(meta(i, d), s, None), n, day, st.integers(1, 5))
    profiles = st.builds(
        lambda i, d, c: ProfilePatch(meta(i, d), {"region": {"country": c}}),
        n,
        day,
        st.sampled_from(["CN", "US", "DE"]),
    )
    return st.one_of(purchases, refunds, interactions, feedback, profiles)


@settings(max_examples=150, deadline=None)
@given(st.lists(event_strategy(), min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_any_mix_of_events_gives_the_same_facts_and_classes_in_any_order(
    events: list[CustomerEvent], rnd: object
) -> None:
    # Event ids are unique, as the ledger guarantees for what reaches `apply`; so are order ids
    # (a purchase of a known order is that purchase again: tests/unit/test_natural_keys.py).
    events = [replace(e, meta=replace(e.meta, event_id=f"u{i}")) for i, e in enumerate(events)]
    events = [
        replace(e, order_id=f"u{i}") if isinstance(e, Purchase) else e for i, e in enumerate(events)
    ]
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, _ = run(events)
    b, _ = run(shuffled)
    strip: dict[str, Any] = {"dimensions": {}, "next_review_at": None}
    assert replace(a, **strip) == replace(b, **strip)
    # Classes judged at the same instant agree (hysteresis is path-dependent by design, so
    # compare from a clean slate).
    end = max(e.meta.time for e in events) + timedelta(days=1)
    fresh_a, _ = classify(replace(a, **strip), RULES, at=end, cause="t")
    fresh_b, _ = classify(replace(b, **strip), RULES, at=end, cause="t")
    assert {d: x.label for d, x in fresh_a.dimensions.items()} == {
        d: x.label for d, x in fresh_b.dimensions.items()
    }


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(amounts, st.integers(0, 720)), min_size=1, max_size=20))
def test_deadlines_always_lie_in_the_future_and_catch_up_reaches_a_fixed_point(
    items: list[tuple[Decimal, int]],
) -> None:
    state, _ = run(
        [buy(i, str(a), days=d) for i, (a, d) in enumerate(sorted(items, key=lambda x: x[1]))]
    )
    horizon = T0 + timedelta(days=5000)
    done, _ = catch_up(state, RULES, until=horizon)
    assert done.next_review_at is None or done.next_review_at > horizon
    again, fired = catch_up(done, RULES, until=horizon)
    assert fired == []
    assert again == done


def population(**overrides: object) -> PopulationStats:
    base = PopulationStats(
        version=3,
        computed_at=T0,
        customers=1000,
        recency_cuts=(10.0, 30.0, 90.0, 200.0),
        frequency_cuts=(1.0, 1.0, 2.0, 4.0),
        monetary_cuts=(20.0, 60.0, 150.0, 400.0),
        abc_a_min_spend=300.0,
        abc_b_min_spend=80.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_rfm_and_abc_are_relative_to_the_population() -> None:
    stats = population()
    state = None
    for i, day in enumerate((0, 5, 9, 12, 14)):
        state, _ = apply(state, buy(i, "100", days=day), RULES, outside=Outside(population=stats))
    assert state is not None
    dims = {d: a.label for d, a in state.dimensions.items()}
    assert dims["rfm"] == "champions"  # recent (R5), 5 orders (F5), 500 spend (M5)
    assert dims["abc"] == "A"
    assert state.dimensions["rfm"].rule_set_version == f"{RULES.version}+pop3"
    # Recency crosses the population's quintile boundaries with time alone.
    assert state.next_review_at is not None
    assert state.next_review_at <= T0 + timedelta(days=14 + 10)
    _later, fired = catch_up(
        state, RULES, until=T0 + timedelta(days=14 + 250), outside=Outside(population=stats)
    )
    rfm = [c.to.label for c in fired if c.dimension == "rfm"]
    assert rfm[-1] == "cant_lose_them"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_abc_thresholds_split_spend_80_15_5(values: list[float]) -> None:
    a_min, b_min = abc_thresholds(values, 0.8, 0.15)
    total = sum(values)
    if total == 0:
        return
    a_share = sum(v for v in values if v >= a_min) / total
    assert a_share >= 0.8 - 1e-9
    assert b_min <= a_min
    assert sum(v for v in values if v >= b_min) / total >= 0.95 - 1e-9


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1e6, allow_nan=False), st.lists(st.floats(0, 1e6), min_size=4, max_size=4))
def test_quintile_scores_are_1_to_5_and_monotone(value: float, cuts: list[float]) -> None:
    cuts = sorted(cuts)
    score = quintile(value, cuts)
    assert 1 <= score <= 5
    assert quintile(value + 1.0, cuts) >= score
    assert quintile(value, cuts, lower_is_better=True) == 6 - score


def test_refunds_beyond_the_order_are_dead_lettered_with_the_reason() -> None:
    order = Purchase(meta(1), order_id="A-1", amount=Decimal("100"), currency="USD")
    first = Refund(meta(2, 1), "A-1", Decimal("60"), "USD")
    second = Refund(meta(3, 2), "A-1", Decimal("50"), "USD")
    state, _ = run([order, first])
    assert state.net_spend_lifetime == Decimal("40")
    with pytest.raises(UnprocessableEvent) as info:
        apply(state, second, RULES)
    assert info.value.field == "data.amount"
    assert "more than its 100" in info.value.reason
    # A refund whose order is unknown is accepted by default (it may arrive first) ...
    stray, _ = run([Refund(meta(4), "Z-9", Decimal("5"), "USD")])
    assert stray.refunds_lifetime == 1
    # ... and dead-lettered when the policy says so.
    strict = replace(RULES, refunds=RefundPolicy(unknown_order="dead_letter"))
    with pytest.raises(UnprocessableEvent, match="unknown order 'Z-9'"):
        run([Refund(meta(4), "Z-9", Decimal("5"), "USD")], strict)


def churn_model() -> FittedModel:
    rng = np.random.default_rng(7)
    n = 800
    x = rng.poisson(2.0, n).astype(float)
    T = rng.uniform(20.0, 60.0, n)
    t_x = np.where(x > 0, rng.uniform(0.0, 1.0, n) * T, 0.0)
    spend = np.where(x > 0, rng.gamma(2.0, 20.0, n), np.nan)
    return fit_model(x, t_x, T, spend, time_unit_days=7.0)


def test_churn_risk_rises_with_time_alone_and_falls_with_a_purchase() -> None:
    outside = Outside(churn=churn_model())
    state = None
    for i, day in enumerate((0, 20, 40, 60)):
        state, _ = apply(state, buy(i, "40", days=day), RULES, outside=outside)
    assert state is not None
    soon = state.dimensions["churn_risk"]
    assert soon.label in ("low", "medium")
    assert soon.rule_set_version.endswith(outside.churn.version)  # type: ignore[union-attr]
    # Re-scored on a cadence with no event: a long silence raises the risk.
    quiet, fired = catch_up(state, RULES, until=T0 + timedelta(days=60 + 400), outside=outside)
    levels = [c.to.label for c in fired if c.dimension == "churn_risk"]
    assert levels, "time alone must move churn risk"
    order = ["low", "medium", "high", "critical"]
    assert [order.index(x) for x in levels] == sorted(order.index(x) for x in levels)
    assert quiet.dimensions["churn_risk"].label in ("high", "critical")
    back, _ = apply(quiet, buy(9, "40", days=461), RULES, outside=outside)
    assert order.index(back.dimensions["churn_risk"].label) < order.index(
        quiet.dimensions["churn_risk"].label
    )


def test_churn_risk_moves_when_the_probability_crosses_its_threshold_not_on_a_cadence() -> None:
    outside = Outside(churn=churn_model())
    state = None
    for i, day in enumerate((0, 20, 40, 60)):
        state, _ = apply(state, buy(i, "40", days=day), RULES, outside=outside)
    assert state is not None
    _, fired = catch_up(state, RULES, until=T0 + timedelta(days=60 + 400), outside=outside)
    steps = [c for c in fired if c.dimension == "churn_risk"]
    assert steps
    thresholds = {
        "medium": RULES.params["churn_medium"],
        "high": RULES.params["churn_high"],
        "critical": RULES.params["churn_critical"],
    }
    minute = timedelta(minutes=1)
    for step in steps:
        # At the step the probability is past the new level's bound; two minutes before, the
        # customer was still below it: the label moved within minutes of the crossing.
        bound = thresholds[step.to.label]
        after = step.to.explanation["inputs"]["churn_probability"]
        assert after >= bound
        earlier = classify(
            state, RULES, at=step.effective_at - 2 * minute, cause="t", outside=outside
        )
        before = earlier[0].dimensions["churn_risk"].label
        assert before != step.to.label
    # A quiet customer is not re-judged weekly: a handful of evaluations, not ~57.
    evaluations = 0
    s = state
    while s.next_review_at is not None and s.next_review_at <= T0 + timedelta(days=460):
        s, _ = classify(s, RULES, at=s.next_review_at, cause="t", outside=outside)
        evaluations += 1
    assert evaluations < 25


def test_a_rule_doing_arithmetic_on_the_churn_probability_is_re_scored_on_the_cadence(
    tmp_path: Path,
) -> None:
    from tierflow_classifier.domain.classify import _churn_thresholds  # noqa: PLC0415

    assert _churn_thresholds(RULES) == (0.3, 0.6, 0.85)
    text = (ROOT / "config" / "classifier.yaml").read_text()
    odd = text.replace(
        "churn_probability >= churn_critical", "churn_probability * 1.1 >= churn_critical"
    )
    path = tmp_path / "classifier.yaml"
    path.write_text(odd)
    rules = load_rules(path)
    assert _churn_thresholds(rules) is None
    outside = Outside(churn=churn_model())
    state, _ = apply(None, buy(0, "40"), rules, outside=outside)
    review = float(rules.params["churn_review_days"])
    assert state.next_review_at is not None
    assert state.next_review_at <= T0 + timedelta(days=review)
