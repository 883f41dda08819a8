"""Manual overrides as pure rules (domain/overrides.py, apply.py, classify.py): an override pins
a dimension, events do not move it, its expiry is a review deadline at which the rules take the
dimension back, and a clearing does that at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_classification import ROOT
from tests.unit.test_contract import purchase
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.classify import catch_up
from tierflow_classifier.domain.model import CustomerState, EventMeta, Override, Purchase
from tierflow_classifier.domain.overrides import allowed_labels, hold_of, override_problem
from tierflow_classifier.exceptions import UnprocessableEvent
from tierflow_ingest.domain.validation import validate_event

RULES = load_rules(ROOT / "config" / "classifier.yaml")
T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
DAY = timedelta(days=1)


def bought(state: CustomerState | None, n: int, at: datetime, amount: str = "40") -> CustomerState:
    meta = EventMeta("shop", f"o-{n}", "c-1", at)
    new, _ = apply(state, Purchase(meta, f"o-{n}", Decimal(amount), "USD"), RULES, at=at)
    return new


def override(
    dimension: str,
    label: str | None,
    at: datetime,
    *,
    expires_at: datetime | None = None,
    oid: str = "ovr-1",
) -> Override:
    meta = EventMeta("tierflow/classifier", f"ev-{oid}-{label}", "c-1", at)
    return Override(meta, dimension, label, "key account", expires_at, oid, "ops key")


def test_an_override_pins_the_label_with_its_reason_and_is_a_change() -> None:
    state = bought(None, 1, T0)
    assert state.dimensions["value_tier"].label == "regular"
    at, until = T0 + DAY, T0 + 10 * DAY
    new, changes = apply(state, override("value_tier", "VIP", at, expires_at=until), RULES, at=at)
    a = new.dimensions["value_tier"]
    assert (a.label, a.reason) == ("VIP", "override")
    assert a.explanation["override"] == {
        "override_id": "ovr-1",
        "label": "VIP",
        "reason": "key account",
        "by": "ops key",
        "expires_at": until.isoformat(),
    }
    mine = [c for c in changes if c.dimension == "value_tier"]
    assert [(c.from_label, c.to.label, c.cause) for c in mine] == [
        ("regular", "VIP", "override:ovr-1")
    ]
    # Its expiry is a review deadline.
    assert new.next_review_at is not None
    assert new.next_review_at <= until


def test_events_do_not_move_an_overridden_dimension_and_the_expiry_gives_it_back() -> None:
    state = bought(None, 1, T0)
    at, until = T0 + DAY, T0 + 20 * DAY
    state, _ = apply(state, override("value_tier", "VIP", at, expires_at=until), RULES, at=at)
    # A big spender now: the rules would say "important", the override holds.
    state = bought(state, 2, T0 + 2 * DAY, amount="2000")
    assert state.dimensions["value_tier"].label == "VIP"
    # The review scheduler catches the customer up past the expiry.
    state, fired = catch_up(state, RULES, until=until + DAY)
    back = state.dimensions["value_tier"]
    assert (back.label, back.reason != "override") == ("important", True)
    assert hold_of(back) is None
    expired = [c for c in fired if c.dimension == "value_tier"]
    assert [(c.from_label, c.to.label, c.cause, c.effective_at) for c in expired] == [
        ("VIP", "important", "override_expired:ovr-1", until)
    ]


def test_a_clearing_gives_the_dimension_back_at_once() -> None:
    state = bought(None, 1, T0)
    at = T0 + DAY
    state, _ = apply(state, override("value_tier", "VIP", at), RULES, at=at)
    assert state.dimensions["value_tier"].label == "VIP"
    later = at + timedelta(hours=1)
    state, changes = apply(state, override("value_tier", None, later, oid="ovr-2"), RULES, at=later)
    assert state.dimensions["value_tier"].label == "regular"
    assert [(c.to.label, c.cause) for c in changes if c.dimension == "value_tier"] == [
        ("regular", "override_cleared:ovr-1")
    ]
    # Clearing again: nothing is overridden any more, nothing changes.
    again, more = apply(state, override("value_tier", None, later, oid="ovr-3"), RULES, at=later)
    assert more == []
    assert again.dimensions == state.dimensions


def test_an_override_expired_on_arrival_changes_nothing() -> None:
    state = bought(None, 1, T0)
    at = T0 + DAY
    late = override("value_tier", "VIP", at, expires_at=at - timedelta(seconds=1))
    assert apply(state, late, RULES, at=at) == (state, [])


@pytest.mark.parametrize(
    ("dimension", "label", "field"),
    [("nope", "VIP", "data.dimension"), ("value_tier", "platinum", "data.label")],
)
def test_an_override_the_rule_set_cannot_hold_is_unprocessable(
    dimension: str, label: str, field: str
) -> None:
    state = bought(None, 1, T0)
    with pytest.raises(UnprocessableEvent) as caught:
        apply(state, override(dimension, label, T0 + DAY), RULES, at=T0 + DAY)
    assert caught.value.field == field
    with pytest.raises(UnprocessableEvent):
        apply(None, override("value_tier", "VIP", T0), RULES, at=T0)


def test_the_labels_an_override_may_name_are_the_dimensions_own() -> None:
    assert allowed_labels(RULES, "value_tier") == frozenset(
        {"VIP", "important", "regular", "potential"}
    )
    assert override_problem(RULES, "value_tier", "VIP") is None
    assert override_problem(RULES, "value_tier", None) is None  # a clearing names no label
    problem = override_problem(RULES, "lifecycle", "VIP")
    assert problem is not None
    assert problem[0] == "label"


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=5),
    start=st.integers(min_value=0, max_value=200),
    length=st.integers(min_value=1, max_value=200),
    label=st.sampled_from(sorted(allowed_labels(RULES, "lifecycle") or ())),
)
def test_an_override_holds_until_it_expires_then_leaves_no_trace(
    gaps: list[int], start: int, length: int, label: str
) -> None:
    """Whatever the purchases: while the override holds the dimension has its label; once it
    expired, the dimension has the label the rules give the same customer never overridden."""
    times = [T0]
    for gap in gaps:
        times.append(times[-1] + gap * DAY)
    at = T0 + start * DAY + timedelta(hours=1)
    until = at + length * DAY
    plain = overridden = None
    pinned = False
    for n, t in enumerate(times):
        if not pinned and t > at:
            assert overridden is not None
            overridden, _ = catch_up(overridden, RULES, until=at)
            overridden, _ = apply(
                overridden, override("lifecycle", label, at, expires_at=until), RULES, at=at
            )
            pinned = True
        plain = bought(plain, n, t)
        overridden = bought(overridden, n, t) if overridden is not None or n == 0 else None
        if pinned and t < until:
            assert overridden is not None
            assert overridden.dimensions["lifecycle"].label == label
    assert plain is not None
    assert overridden is not None
    if not pinned:  # the override comes after the last purchase
        overridden, _ = catch_up(overridden, RULES, until=at)
        overridden, _ = apply(
            overridden, override("lifecycle", label, at, expires_at=until), RULES, at=at
        )
        assert overridden.dimensions["lifecycle"].label == label
    end = max(times[-1], until) + DAY
    plain, _ = catch_up(plain, RULES, until=end)
    overridden, _ = catch_up(overridden, RULES, until=end)
    assert hold_of(overridden.dimensions["lifecycle"]) is None
    assert overridden.dimensions["lifecycle"].label == plain.dimensions["lifecycle"].label


def test_upstream_systems_cannot_send_an_override_through_the_ingest() -> None:
    """Only the classifier's API (role operate, audited) writes overrides on the topic."""
    event = purchase(
        type="classification.override",
        data={
            "dimension": "value_tier",
            "label": "VIP",
            "reason": "r",
            "override_id": "o",
            "by": "k",
        },
    )
    found = validate_event(event, now=T0, max_future_skew=timedelta(days=10_000))
    assert isinstance(found, list)
    assert [e.field for e in found] == ["type"]
