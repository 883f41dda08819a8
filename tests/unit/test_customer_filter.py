"""The customer search's parameters (domain/customer_filter.py): what they select, and every bad
one named with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tierflow_classifier.domain.customer_filter import (
    CustomerFilter,
    FieldProblem,
    Page,
    parse_filter,
    parse_page,
)

DIMENSIONS: dict[str, frozenset[str] | None] = {
    "value_tier": frozenset({"VIP", "important", "regular", "potential"}),
    "lifecycle": frozenset({"new", "active", "at_risk"}),
    "industry": None,  # takes its label from a feature: any label
}


def parsed(**params: str | list[str]) -> CustomerFilter:
    found = parse_filter(
        {k: v if isinstance(v, list) else [v] for k, v in params.items()}, DIMENSIONS
    )
    assert isinstance(found, CustomerFilter), found
    return found


def problems(**params: str | list[str]) -> list[tuple[str, str]]:
    found = parse_filter(
        {k: v if isinstance(v, list) else [v] for k, v in params.items()}, DIMENSIONS
    )
    assert isinstance(found, list), found
    return [(p.field, p.reason) for p in found]


def test_labels_of_one_dimension_are_alternatives_and_dimensions_add_up() -> None:
    f = parsed(label=["value_tier:VIP", "value_tier:important", "lifecycle:active"])
    assert f.labels == {
        "lifecycle": frozenset({"active"}),
        "value_tier": frozenset({"VIP", "important"}),
    }
    assert parsed(label="industry:anything goes").labels == {
        "industry": frozenset({"anything goes"})
    }


def test_ranges_are_typed_and_a_date_as_upper_bound_is_its_whole_day() -> None:
    f = parsed(
        q="cust-1",
        spend_min="100.50",
        spend_max="1e3",
        orders_min="2",
        orders_max="9",
        last_purchase_from="2026-01-01",
        last_purchase_to="2026-01-31",
        churn_min="0.25",
    )
    assert f.prefix == "cust-1"
    assert (f.spend_min, f.spend_max) == (Decimal("100.50"), Decimal("1000"))
    assert (f.orders_min, f.orders_max) == (2, 9)
    assert f.last_purchase_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert f.last_purchase_before == datetime(2026, 2, 1, tzinfo=UTC)
    assert (f.churn_min, f.churn_max) == (0.25, None)
    # A time is inclusive; without an offset it is UTC.
    t = parsed(last_purchase_to="2026-01-31T10:00:00").last_purchase_before
    assert t == datetime(2026, 1, 31, 10, tzinfo=UTC) + timedelta(microseconds=1)
    assert parsed() == CustomerFilter()


def test_every_bad_parameter_is_named_with_its_reason() -> None:
    found = problems(
        label=["value_tier", "tier:VIP", "value_tier:platinum"],
        spend_min="lots",
        orders_max="2.5",
        last_purchase_from="yesterday",
        churn_max="1.5",
    )
    assert [f for f, _ in found] == [
        "label",
        "label",
        "label",
        "spend_min",
        "orders_max",
        "last_purchase_from",
        "churn_max",
    ]
    assert "not dimension:label" in found[0][1]
    assert "unknown dimension 'tier'" in found[1][1]
    assert "'platinum' is not a label of value_tier" in found[2][1]
    assert problems(spend_min="10", spend_max="5") == [("spend_max", "5 is below the minimum 10")]
    assert [f for f, _ in problems(spend_min="NaN")] == ["spend_min"]
    assert [
        f for f, _ in problems(last_purchase_from="2026-02-01", last_purchase_to="2026-01-01")
    ] == ["last_purchase_to"]


def test_pages_are_1_to_1000_customers_after_a_cursor() -> None:
    assert parse_page({}) == Page(50, None)
    assert parse_page({"limit": ["1000"], "after": ["c-9"]}) == Page(1000, "c-9")
    for bad in ("0", "1001", "ten"):
        found = parse_page({"limit": [bad]})
        assert isinstance(found, list)
        assert [p.field for p in found] == ["limit"]


@given(
    low=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
    high=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
)
def test_churn_bounds_are_probabilities_in_order(low: float | None, high: float | None) -> None:
    params = {k: [repr(v)] for k, v in (("churn_min", low), ("churn_max", high)) if v is not None}
    found = parse_filter(params, DIMENSIONS)
    if low is not None and high is not None and high < low:
        assert found == [FieldProblem("churn_max", f"{high} is below the minimum {low}")]
    else:
        assert isinstance(found, CustomerFilter)
        assert (found.churn_min, found.churn_max) == (low, high)


@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(DIMENSIONS)), st.sampled_from(["VIP", "new", "x"])),
        max_size=6,
    )
)
def test_a_label_parameter_is_accepted_exactly_when_its_dimension_holds_it(
    pairs: list[tuple[str, str]],
) -> None:
    found = parse_filter({"label": [f"{d}:{label}" for d, label in pairs]}, DIMENSIONS)
    valid = [
        (d, label) for d, label in pairs if DIMENSIONS[d] is None or label in (DIMENSIONS[d] or ())
    ]
    if len(valid) < len(pairs):
        assert isinstance(found, list)
        assert len(found) == len(pairs) - len(valid)
        assert {p.field for p in found} == {"label"}
    else:
        assert isinstance(found, CustomerFilter)
        for d, label in pairs:
            assert label in found.labels[d]
        assert set(found.labels) == {d for d, _ in pairs}
