"""The dated history customers keep for the churn fit, and production scoring prepared as the
fit and the validation prepare the data: same-day orders merged, decline over 13 weeks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.churn import history as hist
from tierflow_classifier.domain.churn_features import _decline, _inputs
from tierflow_classifier.domain.model import CustomerState, EventMeta, Feedback, Purchase
from tierflow_classifier.domain.purchase_days import day_number, days_of, satisfaction_entries

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "classifier.yaml")
T0 = datetime(2025, 3, 1, 9, tzinfo=UTC)


def buy(n: int, at: datetime, amount: str = "10") -> Purchase:
    meta = EventMeta(source="shop", event_id=f"e{n}", customer_id="c", time=at)
    return Purchase(meta, order_id=f"o{n}", amount=Decimal(amount), currency="USD")


def state_of(events: Sequence[Purchase | Feedback]) -> CustomerState:
    state: CustomerState | None = None
    for e in events:
        state, _ = apply(state, e, RULES)
    assert state is not None
    return state


def test_orders_of_one_day_are_one_purchase_for_the_churn_model() -> None:
    events = [
        buy(1, T0, "10"),
        buy(2, T0 + timedelta(hours=5), "15"),  # same UTC day
        buy(3, T0 + timedelta(days=20), "30"),
        buy(4, T0 + timedelta(days=20, hours=1), "12"),
    ]
    state = state_of(events)
    assert state.purchases_lifetime == 4
    assert days_of(state.features.purchase_days) == [
        (day_number("2025-03-01"), 25.0),
        (day_number("2025-03-21"), 42.0),
    ]
    inputs = _inputs(state, T0 + timedelta(days=30))
    assert inputs is not None
    stats, _ = inputs
    assert stats.x == 1  # two purchase days, not four orders
    assert stats.mean_spend == pytest.approx(42.0)  # the repeat day's spend
    # Any delivery order gives the same history; a resent order is not counted twice.
    for order in itertools.permutations(events):
        again = state_of([*order, order[0]])
        assert again.features.purchase_days == state.features.purchase_days


def test_every_survey_answer_is_kept_with_its_time() -> None:
    answers = [
        Feedback(
            EventMeta(
                source="survey", event_id=f"f{n}", customer_id="c", time=T0 + timedelta(days=n)
            ),
            satisfaction=score,
            nps=None,
        )
        for n, score in ((1, 5), (9, 1))
    ]
    state = state_of([buy(0, T0), *answers])
    entries = sorted(satisfaction_entries(state.features.satisfaction_log))
    assert [value for _, value in entries] == [1.0, 0.0]
    assert entries[1][0] - entries[0][0] == pytest.approx(8.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 400), min_size=1, max_size=30, unique=True),
    st.floats(0.0, 500.0),
)
def test_the_scorers_decline_is_the_fits(days: list[int], now: float) -> None:
    history = hist.ChurnHistory(
        customers=1,
        purchase_customer=np.zeros(len(days), dtype=np.intp),
        purchase_day=np.array(days, dtype=np.float64),
        purchase_amount=np.ones(len(days)),
    )
    c = hist.cut(history, now)
    scalar = _decline(sorted((float(d), 1.0) for d in days), now)
    if c.size == 0:
        assert scalar == 0.0
        return
    assert scalar == pytest.approx(float(hist.decline_at(history, c)[0]), abs=1e-12)
