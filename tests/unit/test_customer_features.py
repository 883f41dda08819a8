"""A customer's features (and profile) are typed facts: any delivery order of the same events
gives the same features, they survive the stored form unchanged, and a row written before the
type existed (instants with "+00:00", amounts as plain strings, a stored open-complaint count)
reads back as the same facts."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_classification import RULES, T0, meta
from tests.unit.test_natural_keys import fold
from tierflow_classifier.adapters.repository import STATE_COLUMNS, state_from_row, state_record
from tierflow_classifier.domain.customer_features import (
    Complaint,
    CustomerFeatures,
    MonthBucket,
    ProfileField,
    decode_features,
    decode_profile,
    encode_features,
    encode_profile,
)
from tierflow_classifier.domain.features import compute_features, window_sums
from tierflow_classifier.domain.model import (
    CustomerEvent,
    CustomerState,
    Feedback,
    Interaction,
    ProfilePatch,
    Purchase,
    Refund,
)

KINDS = ("visit", "support_contact", "referral", "revisit_done", "complaint", "complaint_resolved")


@st.composite
def histories(draw: st.DrawFn) -> list[CustomerEvent]:
    """Purchases (some discounted), refunds of them, interactions (complaints opened and
    resolved in any order), survey answers: each event with its own id and time."""
    events: list[CustomerEvent] = []
    left: dict[str, Decimal] = {}  # what each order may still be refunded
    days = st.integers(0, 800)
    for n in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(("buy", "refund", "interaction", "feedback", "profile")))
        m = meta(n, draw(days) + draw(st.integers(0, 86_399)) / 86_400)
        if kind == "buy" or not events:
            amount = Decimal(draw(st.integers(1, 99_999))) / 100
            events.append(Purchase(m, f"o{n}", amount, "USD", discounted=draw(st.booleans())))
            left[f"o{n}"] = amount
        elif kind == "refund":
            order = draw(st.sampled_from([e for e in events if isinstance(e, Purchase)]))
            part = (order.amount / draw(st.sampled_from((2, 4, 5)))).quantize(Decimal("0.01"))
            if Decimal("0.01") <= part <= left[order.order_id]:  # never more than it cost
                left[order.order_id] -= part
                events.append(Refund(m, order.order_id, part, "USD"))
        elif kind == "interaction":
            what = draw(st.sampled_from(KINDS))
            complaint = (
                draw(st.sampled_from(("k1", "k2"))) if what.startswith("complaint") else None
            )
            events.append(Interaction(m, what, complaint_id=complaint))
        elif kind == "feedback":
            events.append(Feedback(m, satisfaction=draw(st.integers(1, 5)), nps=None))
        else:
            # As the contract has them: region an object, the others strings.
            fields = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "industry": st.sampled_from(("retail", "software")),
                        "company_size": st.sampled_from(("SME", "enterprise")),
                        "region": st.fixed_dictionaries({"country": st.sampled_from(("CN", "DE"))}),
                    },
                ).filter(bool)
            )
            events.append(ProfilePatch(m, fields))
    return events


@settings(max_examples=150, deadline=None)
@given(histories(), st.data())
def test_any_delivery_order_gives_the_same_typed_features(
    events: list[CustomerEvent], data: st.DataObject
) -> None:
    state = fold(events)
    features = state.features
    again = fold(data.draw(st.permutations(events)))
    assert again.features == features
    assert again.profile == state.profile
    purchases = [e for e in events if isinstance(e, Purchase)]
    assert set(features.orders) == {e.order_id for e in purchases}
    assert all(type(v) is Decimal for v in features.orders.values())
    assert sum(b.orders for b in features.months.values()) == len(purchases)
    refunds = sum((e.amount for e in events if isinstance(e, Refund)), Decimal(0))
    assert sum((b.spend for b in features.months.values()), Decimal(0)) == (
        sum((e.amount for e in purchases), Decimal(0)) - refunds
    )
    assert features.discounted_purchases == sum(e.discounted for e in purchases)


@settings(max_examples=150, deadline=None)
@given(histories())
def test_the_stored_form_reads_back_as_the_same_features(events: list[CustomerEvent]) -> None:
    state = fold(events)
    assert decode_features(encode_features(state.features)) == state.features
    # And the whole row, as the repository writes and reads it.
    row = dict(zip(STATE_COLUMNS, state_record(state), strict=False))
    row["recent_purchases"] = list(state.recent_purchases)
    back = state_from_row(row, orjson.loads)
    assert back.features == state.features
    assert back.profile == state.profile
    at = T0 + timedelta(days=900)
    assert compute_features(back, at, RULES.params) == compute_features(state, at, RULES.params)


# A row's `features` as the classifier wrote them before they were typed.
FORMER = b"""{
 "months": {"2025-01": {"spend": "120.50", "orders": 2}, "2025-03": {"spend": "-20", "orders": 0}},
 "purchase_days": {"2025-01-02": "100.50", "2025-01-20": "20"},
 "orders": {"o1": "100.50", "o2": "20"},
 "refunded_orders": {"o1": "20"},
 "refund_causes": {"o1": ["event:shop/e3"]},
 "discounted_purchases": 1,
 "interactions": {"complaint": 2, "complaint_resolved": 1, "visit": 3},
 "last_interaction_at": "2025-03-05T10:00:00+00:00",
 "complaints": {"k1": {"opened_at": "2025-03-01T09:00:00+00:00",
                       "resolved_at": "2025-03-02T09:00:00+00:00"},
                "k2": {"opened_at": "2025-03-05T10:00:00+00:00"}},
 "open_complaints": 1,
 "satisfaction_count": 2, "satisfaction_sum": 7,
 "satisfaction_log": {"2025-02-01T00:00:00+00:00|event:survey/f1": 3,
                      "2025-02-10T00:00:00+00:00|event:survey/f2": 4},
 "satisfaction_latest": 4,
 "satisfaction_latest_at": "2025-02-10T00:00:00+00:00",
 "satisfaction_latest_cause": "event:survey/f2"
}"""


def test_a_row_written_before_the_type_reads_as_the_same_facts() -> None:
    f = decode_features(FORMER)
    at = datetime.fromisoformat("2025-03-05T10:00:00+00:00")
    assert f.months["2025-01"] == MonthBucket(Decimal("120.50"), 2)
    assert f.orders == {"o1": Decimal("100.50"), "o2": Decimal(20)}
    assert f.refund_causes == {"o1": ("event:shop/e3",)}
    assert f.complaints["k2"] == Complaint(opened_at=at)
    assert f.open_complaints == 1  # derived from the complaints, as the stored count said
    assert f.last_interaction_at == at
    assert f.satisfaction_latest == 4
    assert window_sums(f.months, at, 12) == (Decimal("100.50"), 2, 2025 * 12)
    state = CustomerState("c", purchases_lifetime=2, features=f)
    computed = compute_features(state, at, RULES.params)
    assert computed["open_complaints"] == 1
    assert computed["complaints_total"] == 2
    assert computed["oldest_open_complaint_days"] == 0.0
    assert computed["satisfaction_avg"] == 3.5
    assert computed["product_interest"] == 3
    # Written again, it reads back the same, without the count it no longer stores.
    assert decode_features(encode_features(f)) == f
    assert b"open_complaints" not in encode_features(f)


def test_features_are_values_no_one_can_change_in_place() -> None:
    f = CustomerFeatures(referrals=1)
    with pytest.raises(AttributeError):
        f.referrals = 2  # type: ignore[misc]


def test_a_profile_written_before_the_type_reads_as_the_same_fields() -> None:
    stored = b'{"region": {"value": {"country": "CN", "city": "Hangzhou"},'
    stored += b' "at": "2025-03-01T09:00:00+00:00"}, "industry": {"value": "retail",'
    stored += b' "at": "2025-03-02T09:00:00+00:00"}}'
    profile = decode_profile(stored)
    assert profile["region"] == ProfileField(
        {"country": "CN", "city": "Hangzhou"}, datetime.fromisoformat("2025-03-01T09:00:00+00:00")
    )
    state = CustomerState("c", profile=profile)
    computed = compute_features(state, T0, RULES.params)
    assert (computed["city"], computed["industry"]) == ("Hangzhou", "retail")
    assert decode_profile(encode_profile(profile)) == profile
