"""`evolve` is `dataclasses.replace` for the classifier's states, without the frozen __init__:
the same value for any fields changed, the original untouched, and a misspelt field refused;
`assemble` and the stored assignments read back build what the dataclasses build."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierflow_classifier.adapters.repository import _assignments_from_json, _dimensions_json
from tierflow_classifier.domain.customer_features import CustomerFeatures
from tierflow_classifier.domain.model import Assignment, Change, CustomerState, assemble, evolve
from tierflow_classifier.domain.rules import rule_reason

changes = st.fixed_dictionaries(
    {},
    optional={
        "purchases_lifetime": st.integers(0, 10**6),
        "net_spend_lifetime": st.decimals(allow_nan=False, allow_infinity=False, places=2),
        "first_seen_at": st.none() | st.datetimes(timezones=st.just(UTC)),
        "features": st.builds(
            CustomerFeatures,
            referrals=st.integers(0, 100),
            satisfaction_latest=st.none() | st.integers(1, 5),
        ),
        "rule_set_version": st.text(max_size=8),
        "churn_probability": st.none() | st.floats(0, 1),
    },
)


@given(changes)
def test_evolve_equals_replace_and_leaves_the_original_alone(fields: dict[str, Any]) -> None:
    original = CustomerState(
        "c1", 2, Decimal("10.50"), first_seen_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    before = replace(original)
    evolved = evolve(original, **fields)
    assert evolved == replace(original, **fields)
    assert type(evolved) is CustomerState
    assert original == before


def test_a_misspelt_field_is_refused() -> None:
    with pytest.raises(AssertionError):
        evolve(CustomerState("c1"), purchase_lifetime=3)


texts = st.text(max_size=12)
instants = st.datetimes(timezones=st.just(UTC))
explanations = st.dictionaries(
    texts,
    st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | texts,
)


@given(texts, instants, texts, texts, explanations, texts)
def test_assemble_builds_what_the_dataclasses_build(
    label: str, since: datetime, rule: str, reason: str, why: dict[str, Any], version: str
) -> None:
    built = assemble(
        Assignment,
        label=label,
        since=since,
        rule=rule,
        reason=reason,
        explanation=why,
        rule_set_version=version,
    )
    assert built == Assignment(label, since, rule, reason, why, version)
    assert type(built) is Assignment
    change = assemble(
        Change,
        customer_id="c1",
        dimension="value_tier",
        from_label=None,
        to=built,
        cause="event:s/e",
        effective_at=since,
    )
    assert change == Change("c1", "value_tier", None, built, "event:s/e", since)
    with pytest.raises(FrozenInstanceError):
        built.label = "other"  # type: ignore[misc]


versions = st.text(max_size=8).map(lambda v: "rs_" + v)
# A matched rule's inputs: what CEL variables hold, and values JSON does not give back as they
# were (a tuple comes back a list; NaN and infinities null).
inputs = st.dictionaries(
    texts,
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | texts
    | st.tuples(st.integers(0, 9)),
    max_size=3,
)


@st.composite
def judged_states(draw: st.DrawFn) -> CustomerState:
    """A state whose assignments take the shortcuts the row has for them as often as not: a
    dimension's own default rule and reason, the row's version, the row's version plus a
    population suffix, or anything else."""
    row_version = draw(st.sampled_from(["", "rs_a", "rs_a+churn_3"]) | versions)
    names = draw(st.lists(st.text(min_size=1, max_size=8), max_size=6, unique=True))
    dims: dict[str, Assignment] = {}
    for name in names:
        if draw(st.booleans()):
            # A matched rule: its reason implied by its explanation as often as not.
            expression, read = draw(texts), draw(inputs)
            implied = rule_reason(expression, read)
            dims[name] = Assignment(
                draw(texts),
                draw(instants),
                f"{name}.rules[0]",
                implied if draw(st.booleans()) else draw(texts),
                {"expression": expression, "inputs": read},
                draw(st.just(row_version) | versions),
            )
            continue
        default = draw(st.booleans())
        dims[name] = Assignment(
            draw(texts),
            draw(instants),
            f"{name}.default" if default and draw(st.booleans()) else draw(texts),
            "no rule matched" if default and draw(st.booleans()) else draw(texts),
            draw(st.just({}) | st.just({"evaluated": ["x > 1"]}) | explanations),
            draw(
                st.just(row_version)
                | st.integers(0, 99).map(lambda n: f"{row_version}+pop{n}")
                | versions
            ),
        )
    return CustomerState("c1", rule_set_version=row_version, dimensions=dims)


@given(judged_states())
def test_stored_assignments_load_as_they_were_saved(state: CustomerState) -> None:
    """What the repository writes for a state's assignments reads back equal (a default
    label's explanation is left out of the row; it reads back empty)."""
    stored = orjson.loads(_dimensions_json(state))
    loaded = _assignments_from_json(stored, state.rule_set_version)
    for name, a in state.dimensions.items():
        default = a.rule.endswith(".default") and (
            not a.explanation or set(a.explanation) == {"evaluated"}
        )
        expected = replace(a, explanation={}) if default else a
        assert loaded[name].reason == expected.reason
        assert loaded[name].label == expected.label
        assert loaded[name].since == expected.since
        assert loaded[name].rule == expected.rule
        assert loaded[name].rule_set_version == expected.rule_set_version
        # As JSON gives it back (a tuple as a list, NaN as null): what the row always held.
        assert loaded[name].explanation == orjson.loads(orjson.dumps(expected.explanation))


def test_a_matched_rule_is_stored_without_the_reason_its_explanation_implies() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    read = {"spend_window": 1111.05}
    why: dict[str, Any] = {"expression": "spend_window >= 1000.0", "inputs": read}
    reason = rule_reason("spend_window >= 1000.0", read)
    matched = Assignment("important", since, "value_tier.rules[1]", reason, why, "rs_a")
    told = replace(matched, reason="set by hand")
    state = CustomerState(
        "c1", rule_set_version="rs_a", dimensions={"value_tier": matched, "other": told}
    )
    stored = orjson.loads(_dimensions_json(state))
    assert "reason" not in stored["value_tier"]
    assert stored["other"]["reason"] == "set by hand"
    loaded = _assignments_from_json(stored, "rs_a")
    assert loaded["value_tier"].reason == "spend_window >= 1000.0  [spend_window=1111.05]"
    assert loaded == {"value_tier": matched, "other": told}


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), (1, 2), [1.5], {"a": 1}, 2.5, None, True, "x'y"]
)
def test_a_reason_reads_back_whatever_json_makes_of_the_inputs(value: Any) -> None:
    """Left out only where the explanation, as JSON gives it back, implies it again."""
    read = {"x": value}
    a = Assignment("l", datetime(2026, 1, 1, tzinfo=UTC), "d.rules[0]", "", {}, "rs_a")
    a = replace(
        a, reason=rule_reason("x > 1", read), explanation={"expression": "x > 1", "inputs": read}
    )
    state = CustomerState("c1", rule_set_version="rs_a", dimensions={"d": a})
    loaded = _assignments_from_json(orjson.loads(_dimensions_json(state)), "rs_a")
    assert loaded["d"].reason == a.reason


def test_a_default_label_is_stored_as_its_label_and_instant() -> None:
    """Most of a new customer's dimensions hold their default label: the row keeps what the
    rule set does not already say (and the version only where it is not the row's)."""
    since = datetime(2026, 1, 1, tzinfo=UTC)
    state = CustomerState(
        "c1",
        rule_set_version="rs_a",
        dimensions={
            "rfm": Assignment("unscored", since, "rfm.default", "no rule matched", {}, "rs_a"),
            "abc": Assignment("C", since, "abc.rules[2]", "r", {"inputs": {}}, "rs_a+pop4"),
        },
    )
    assert orjson.loads(_dimensions_json(state)) == {
        "rfm": {"label": "unscored", "since": "2026-01-01T00:00:00Z"},
        "abc": {
            "label": "C",
            "since": "2026-01-01T00:00:00Z",
            "rule": "abc.rules[2]",
            "reason": "r",
            "explanation": {"inputs": {}},
            "rule_set_version": "+pop4",
        },
    }


def test_a_stored_assignment_with_unknown_fields_is_refused() -> None:
    row = {"label": "VIP", "since": "2026-01-01T00:00:00+00:00", "rule": "r", "reason": "x"}
    with pytest.raises(ValueError, match="fields"):
        _assignments_from_json(
            {"value_tier": {**row, "rule_set_version": "v", "extra": 1}}, row_version="v"
        )


def test_a_stored_assignment_with_one_field_renamed_is_refused() -> None:
    """As many fields as an assignment has, one of them not its own: refused at load, not
    when some later code reads the missing one."""
    row = {"label": "VIP", "since": "2026-01-01T00:00:00+00:00", "rule": "r", "reason": "x"}
    with pytest.raises(ValueError, match="fields"):
        _assignments_from_json({"value_tier": {**row, "rule_set_versio": "v"}}, row_version="v")
