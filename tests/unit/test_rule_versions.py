"""Rule sets as versioned data, pure parts: content-derived versions, diffs, the canary share,
what an activation puts in force, and how a new rule set meets hysteresis."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import ROOT
from tierflow_classifier.adapters.rules_file import load_rules, normalised_text, parse_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.domain.reclassification import Basis, Canary, TimePassed
from tierflow_classifier.domain.rule_versions import (
    Activation,
    diff,
    in_rollout,
    next_activation,
    redefined,
)
from tierflow_common.config_file import ConfigProblems

TEXT = (ROOT / "config" / "classifier.yaml").read_text()
RULES = load_rules(ROOT / "config" / "classifier.yaml")
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def with_param(text: str, name: str, old: str, new: str) -> str:
    before = f"  {name}: {old}"
    assert before in text
    return text.replace(before, f"  {name}: {new}", 1)


def test_the_version_is_the_content_not_its_label_layout_or_comments() -> None:
    relabelled = TEXT.replace('rule_set_version: "2026.11-dimensions.1"', "rule_set_version: x")
    # Comments gone, keys reordered, numbers written differently: the same rules.
    doc = yaml.safe_load(TEXT)
    doc["params"] = dict(reversed(list(doc["params"].items())))
    doc["params"]["vip_spend"] = 5000.0
    doc["rates"]["EUR"] = "1.080"
    rewritten = yaml.safe_dump(doc, sort_keys=False)
    versions = {parse_rules(t).version for t in (TEXT, relabelled, rewritten)}
    assert versions == {RULES.version}
    assert parse_rules(relabelled).label == "x"


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=1, max_value=1e6, allow_nan=False).filter(lambda v: v != 5000))
def test_any_change_of_a_param_is_another_version(vip_spend: float) -> None:
    changed = with_param(TEXT, "vip_spend", "5000 ", f"{vip_spend!r} ")
    assert parse_rules(changed).version != RULES.version


def test_reordering_rules_is_another_version() -> None:
    doc = yaml.safe_load(TEXT)
    doc["dimensions"]["value_tier"]["rules"].reverse()
    assert parse_rules(yaml.safe_dump(doc)).version != RULES.version


def test_diff_names_the_params_and_rules_that_differ() -> None:
    candidate = with_param(TEXT, "vip_spend", "5000 ", "3000 ").replace(
        '{label: important, when: "spend_window >= important_spend"}',
        '{label: important, when: "spend_window >= important_spend * 1.5"}',
    )
    found = diff(normalised_text(TEXT), normalised_text(candidate))
    assert [(d.path, d.before, d.after) for d in found] == [
        (
            "dimensions.value_tier.rules[1].when",
            "spend_window >= important_spend",
            "spend_window >= important_spend * 1.5",
        ),
        ("params.vip_spend", 5000.0, 3000.0),
    ]
    assert diff(normalised_text(TEXT), normalised_text(TEXT)) == []


def test_redefined_dimensions_are_those_whose_rules_or_the_params_they_read_changed() -> None:
    vip = parse_rules(with_param(TEXT, "vip_spend", "5000 ", "3000 "))
    assert redefined(RULES, vip) == {"value_tier"}
    # A timer's param: the dimensions whose rules read that timer.
    onboarding = parse_rules(with_param(TEXT, "onboarding_days", "30 ", "14 "))
    assert "lifecycle" in redefined(RULES, onboarding)
    assert "value_tier" not in redefined(RULES, onboarding)
    assert redefined(None, vip) == frozenset()
    assert redefined(RULES, RULES) == frozenset()


@settings(max_examples=20, deadline=None)
@given(st.floats(min_value=1, max_value=99), st.floats(min_value=1, max_value=99))
def test_a_canary_share_only_grows_with_its_percent(small: float, large: float) -> None:
    small, large = sorted((small, large))
    ids = [f"customer-{i}" for i in range(2_000)]
    assert {c for c in ids if in_rollout(c, small)} <= {c for c in ids if in_rollout(c, large)}


@pytest.mark.parametrize("percent", [5.0, 25.0, 50.0, 90.0])
def test_the_canary_share_is_within_three_points_at_ten_thousand_customers(
    percent: float,
) -> None:
    share = sum(in_rollout(f"c{i:05d}", percent) for i in range(10_000)) / 100
    assert abs(share - percent) <= 3


def activation(n: int, version: str, previous: str | None, percent: float) -> Activation:
    return Activation(n, version, previous, percent, NOW, "test")


def test_an_activation_replaces_a_partial_rollout_and_rolls_back_to_what_the_rest_keep() -> None:
    first = next_activation(None, "A", 100, at=NOW, by="file")
    assert (first.activation, first.version, first.previous, first.rollout_percent) == (
        1,
        "A",
        None,
        100.0,
    )
    canary = next_activation(first, "B", 10, at=NOW, by="ops")
    assert (canary.version, canary.previous, canary.rollout_percent) == ("B", "A", 10)
    # Only one version rolls out at a time: C replaces B's canary, over A.
    other = next_activation(canary, "C", 30, at=NOW, by="ops")
    assert (other.activation, other.version, other.previous) == (3, "C", "A")
    rollback = next_activation(other, "A", 40, at=NOW, by="ops")
    assert (rollback.version, rollback.previous, rollback.rollout_percent) == ("A", None, 100)
    full = next_activation(canary, "B", 100, at=NOW, by="ops")
    assert (full.previous, full.rollout_percent) == (None, 100)


def vip_customer(spend: int) -> CustomerState:
    """A customer with three orders adding up to `spend` in the last month, judged by RULES."""
    state: CustomerState | None = None
    for n in range(3):
        at = NOW - timedelta(days=30 - n)
        meta = EventMeta("shop", f"o{n}", "vip", at)
        amount = Decimal(spend) / 3
        state, _ = apply(state, Purchase(meta, f"o{n}", amount, "USD"), RULES, at=at)
    assert state is not None
    return state


def test_raising_the_bar_applies_at_once_to_its_dimension_hysteresis_holds_elsewhere() -> None:
    customer = vip_customer(5_400)
    assert customer.dimensions["value_tier"].label == "VIP"
    higher = parse_rules(with_param(TEXT, "vip_spend", "5000 ", "5800 "))
    known = {RULES.version: RULES, higher.version: higher}
    judged = TimePassed(NOW)(customer, "vip", Basis(higher, activation=2, known=known))
    assert judged.state is not None
    # 5,400 is within the 10% band of 5,800, but the operator moved the bar: it applies.
    assert judged.state.dimensions["value_tier"].label == "important"
    (change,) = [c for c in judged.changes if c.dimension == "value_tier"]
    assert change.cause == f"rule_set_activated:{higher.version}/2"
    # Judged VIP by `higher` already (held by its band), a change elsewhere in the rule set
    # leaves the value tier's hysteresis holding.
    held = dataclasses.replace(customer, rule_set_version=higher.version)
    unrelated = parse_rules(
        with_param(with_param(TEXT, "vip_spend", "5000 ", "5800 "), "loyal_referrals", "2\n", "3\n")
    )
    assert redefined(higher, unrelated) == {"loyalty"}
    known[unrelated.version] = unrelated
    kept = TimePassed(NOW)(held, "vip", Basis(unrelated, activation=3, known=known))
    assert kept.state is not None
    assert kept.state.dimensions["value_tier"].label == "VIP"
    assert not [c for c in kept.changes if c.dimension == "value_tier"]


def test_a_canary_judges_its_share_by_the_candidate_and_the_rest_by_the_previous() -> None:
    higher = parse_rules(with_param(TEXT, "vip_spend", "5000 ", "9000 "))
    canary = Canary(Basis(higher), Basis(RULES), 50)
    ids = [f"c{i}" for i in range(400)]
    picked = {c: canary.for_customer(c).rules.version for c in ids}
    assert {c for c, v in picked.items() if v == higher.version} == {
        c for c in ids if in_rollout(c, 50)
    }
    assert set(picked.values()) == {higher.version, RULES.version}


def test_a_bad_rule_set_names_line_column_and_problem() -> None:
    broken = TEXT.replace("rfm_r >= 4 && rfm_fm >= 4", "rfm_r >= 4 &&& rfm_fm >= 4")
    with pytest.raises(ConfigProblems) as caught:
        parse_rules(broken, "candidate")
    (problem,) = caught.value.problems
    line = TEXT[: TEXT.index("rfm_r >= 4 && rfm_fm >= 4")].count("\n") + 1
    assert (problem.line, problem.location) == (line, "dimensions.rfm.rules.0.when")
    assert problem.column is not None
    assert "invalid CEL" in problem.message
