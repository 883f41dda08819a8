"""Each classification keeps the customer's churn probability (what the customer search
filters by): the churn model's, at the instant judged; none without a model or a purchase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.unit.test_churn_model import CDNOW_PARAMS, model_for
from tests.unit.test_overrides import RULES
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.churn_features import churn_features
from tierflow_classifier.domain.classify import Outside, catch_up, rule_set_churn_config
from tierflow_classifier.domain.model import EventMeta, Interaction, Purchase

T = datetime(2026, 2, 1, tzinfo=UTC)


def test_the_probability_of_the_last_judgement_is_kept_with_the_state() -> None:
    outside = Outside(churn=model_for(CDNOW_PARAMS))
    state = None
    for n in range(3):
        at = T + timedelta(days=30 * n)
        meta = EventMeta("shop", f"o-{n}", "c-1", at)
        state, _ = apply(state, Purchase(meta, f"o-{n}", Decimal(80), "USD"), RULES, at=at)
    assert state is not None
    at = T + timedelta(days=61)
    judged, _ = catch_up(state, RULES, until=at, outside=outside)
    meta = EventMeta("desk", "v-1", "c-1", at)
    judged, _ = apply(judged, Interaction(meta, "visit"), RULES, at=at, outside=outside)
    expected = churn_features(judged, at, outside.churn, rule_set_churn_config(RULES))
    assert judged.churn_probability == expected["churn_probability"]
    assert judged.churn_probability is not None
    assert 0.0 <= judged.churn_probability <= 1.0
    # Quiet for a year: judged again, riskier.
    later, _ = catch_up(judged, RULES, until=at + timedelta(days=365), outside=outside)
    assert later.churn_probability is not None
    assert later.churn_probability > judged.churn_probability
    # No model: not scored.
    assert state.churn_probability is None
