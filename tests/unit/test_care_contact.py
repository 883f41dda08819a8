"""The care loop in the classifier's pure step, with the shipped rules: a completed revisit
(the notifier's revisit_done) becomes the last-contact fact, which the care_contact rules read:
an at-risk customer is due a revisit, contacted recently once it was done, and due again when
the cooldown has passed and they are still at risk."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_classification import RULES, T0, advance, buy, labels, meta, run
from tierflow_classifier.domain.classify import classify
from tierflow_classifier.domain.features import NEVER, compute_features
from tierflow_classifier.domain.model import Interaction

COOLDOWN = float(RULES.params["contact_cooldown_days"])


def test_a_completed_revisit_resets_the_contact_fact_and_what_is_due_next() -> None:
    # One purchase, then silence: at risk after 2 x the default 90-day rhythm.
    state, _ = run([buy(1, "80.00")])
    assert state.dimensions["care_contact"].label == "none"
    state, fired = advance(state, 181)
    assert labels(fired, "care_contact") == ["revisit_due"]
    assert labels(fired, "lifecycle")[-1] == "at_risk"

    done = Interaction(meta(2, 182), "revisit_done")
    state, _ = run([buy(1, "80.00"), done])
    assert state.dimensions["care_contact"].label == "contacted_recently"
    assert state.dimensions["lifecycle"].label == "at_risk"  # the revisit does not buy
    features = compute_features(state, T0 + timedelta(days=183), RULES.params)
    assert round(features["days_since_contact"], 6) == 1.0
    assert features["care_contacts"] == 1
    explained = state.dimensions["care_contact"].explanation
    assert explained["inputs"]["care_contacts"] == 1.0

    # The cooldown passes while the customer is still at risk (not yet churned): due again.
    state, fired = advance(state, 182 + COOLDOWN + 1)
    assert labels(fired, "care_contact") == ["revisit_due"]


def test_a_customer_never_contacted_has_no_contact_fact() -> None:
    state, _ = run([buy(1, "10.00")])
    features = compute_features(state, T0 + timedelta(days=1), RULES.params)
    assert features["days_since_contact"] == NEVER
    assert features["care_contacts"] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 400), min_size=1, max_size=5), st.floats(0, 400))
def test_contacted_recently_exactly_while_the_latest_contact_is_within_the_cooldown(
    contacts: list[float], later: float
) -> None:
    """Whatever the order the revisits are reported in, the latest one counts."""
    events = [buy(1, "80.00")] + [
        Interaction(meta(10 + i, d), "revisit_done") for i, d in enumerate(contacts)
    ]
    state, _ = run(events)
    at = T0 + timedelta(days=max(contacts) + later)
    judged, _ = classify(state, RULES, at=at, cause="time:test")
    recent = later < COOLDOWN
    assert (judged.dimensions["care_contact"].label == "contacted_recently") == recent
