"""Purchases and refunds are idempotent by their natural key, whatever the ledger remembers: an
order id per customer for a purchase, the refund's own cause among its order's refunds. A
resend older than the ledger's window reaches `apply` and must change nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_classification import RULES, T0, buy, meta
from tierflow_classifier.domain.apply import already_applied, apply
from tierflow_classifier.domain.classify import classify
from tierflow_classifier.domain.model import CustomerEvent, CustomerState, Purchase, Refund

STRIP: dict[str, Any] = {"dimensions": {}, "next_review_at": None}


def refund(n: int, order: str, amount: str, *, days: float = 0) -> Refund:
    return Refund(meta(n, days), order, Decimal(amount), "USD")


def fold(events: list[CustomerEvent]) -> CustomerState:
    state: CustomerState | None = None
    for e in events:
        state, _ = apply(state, e, RULES)
    assert state is not None
    return state


def test_a_resent_purchase_changes_nothing_and_reports_no_change() -> None:
    first, changes = apply(None, buy(1, "700"), RULES)
    assert changes  # the first purchase: a first value tier
    again, changes = apply(first, buy(1, "700"), RULES)
    assert again == first
    assert changes == []
    assert (again.purchases_lifetime, again.net_spend_lifetime) == (1, Decimal("700"))


def test_a_purchase_of_a_known_order_under_another_event_id_is_the_same_purchase() -> None:
    state = fold([buy(1, "700")])
    other = replace(buy(2, "700"), order_id="1")
    assert already_applied(state, other)
    assert apply(state, other, RULES) == (state, [])


def test_a_refund_resent_changes_nothing_but_a_second_part_refund_applies() -> None:
    state = fold([buy(1, "100"), refund(2, "1", "30")])
    assert already_applied(state, refund(2, "1", "30"))
    assert apply(state, refund(2, "1", "30"), RULES) == (state, [])
    part = refund(3, "1", "30")
    assert not already_applied(state, part)
    after, _ = apply(state, part, RULES)
    assert (after.refunds_lifetime, after.refunded_lifetime) == (2, Decimal("60"))
    assert after.net_spend_lifetime == Decimal("40")


def test_a_refund_before_its_purchase_is_remembered_too() -> None:
    # Accepted for an unknown order (events may arrive in any order), then resent.
    state = fold([refund(1, "9", "5")])
    assert already_applied(state, refund(1, "9", "5"))
    state = fold([refund(1, "9", "5"), buy(9, "50"), refund(1, "9", "5"), buy(9, "50")])
    assert (state.purchases_lifetime, state.refunds_lifetime) == (1, 1)
    assert state.net_spend_lifetime == Decimal("45")


def test_other_events_are_never_taken_for_resends() -> None:
    state = fold([buy(1, "10")])
    assert not already_applied(None, buy(1, "10"))
    assert not already_applied(state, buy(2, "10"))


amounts = st.decimals(min_value=1, max_value=10_000, places=2, allow_nan=False)


@st.composite
def purchases_and_refunds(draw: st.DrawFn) -> list[CustomerEvent]:
    """Distinct purchases (one per order) and refunds of them — parts adding up to at most what
    the order cost, so no order of arrival makes one impossible — and of unknown orders."""
    events: list[CustomerEvent] = []
    n = 0
    for order in range(draw(st.integers(1, 6))):
        amount = draw(amounts)
        events.append(
            replace(buy(n, str(amount), days=draw(st.integers(0, 400))), order_id=f"o{order}")
        )
        n += 1
        left = amount
        for part in draw(st.lists(st.integers(1, 100), max_size=3)):
            value = (amount * part / 300).quantize(Decimal("0.01"))
            if Decimal("0.01") <= value <= left:
                events.append(refund(n, f"o{order}", str(value), days=draw(st.integers(0, 400))))
                n += 1
                left -= value
    for _ in range(draw(st.integers(0, 2))):
        events.append(refund(n, f"unknown{n}", str(draw(amounts)), days=draw(st.integers(0, 400))))
        n += 1
    return events


@settings(max_examples=200, deadline=None)
@given(purchases_and_refunds(), st.data())
def test_resending_purchases_and_refunds_any_number_of_times_in_any_order_changes_nothing(
    events: list[CustomerEvent], data: st.DataObject
) -> None:
    once = fold(events)
    copies = [e for e in events for _ in range(data.draw(st.integers(1, 4)))]
    resent = data.draw(st.permutations(copies))
    state: CustomerState | None = None
    for e in resent:
        seen = already_applied(state, e)
        new, changes = apply(state, e, RULES)
        if seen:
            assert (new, changes) == (state, [])  # a resend: no change at all
        state = new
    assert state is not None
    # The same facts as each event applied once (the labels' path may differ with the order:
    # hysteresis; judged afresh at one instant they agree).
    assert replace(state, **STRIP) == replace(once, **STRIP)
    purchases = [e for e in events if isinstance(e, Purchase)]
    assert state.purchases_lifetime == len(purchases)
    assert state.refunds_lifetime == len(events) - len(purchases)
    end = T0 + timedelta(days=500)
    fresh, _ = classify(replace(state, **STRIP), RULES, at=end, cause="t")
    expected, _ = classify(replace(once, **STRIP), RULES, at=end, cause="t")
    assert {d: a.label for d, a in fresh.dimensions.items()} == {
        d: a.label for d, a in expected.dimensions.items()
    }
