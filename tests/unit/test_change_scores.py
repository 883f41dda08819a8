"""The scores a classification change carries are the read API's full score of the customer:
the same probability, CLV and value at risk, computed for a whole batch at once."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_churn_model import model_for
from tierflow_classifier.domain.change_scores import change_scores
from tierflow_classifier.domain.churn import FittedModel
from tierflow_classifier.domain.churn.bgnbd import BgNbdParams
from tierflow_classifier.domain.churn_features import churn_config, full_score
from tierflow_classifier.domain.customer_features import Complaint, CustomerFeatures
from tierflow_classifier.domain.model import CustomerState
from tierflow_common.contract.events import ChangeScores

NOW = datetime(2026, 6, 1, tzinfo=UTC)
MODELS = [
    model_for(BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)),
    model_for(BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426), spend=None),
]


@st.composite
def customers(draw: st.DrawFn) -> CustomerState:
    n = draw(st.integers(min_value=0, max_value=60))
    first_days = draw(st.floats(min_value=0.0, max_value=1500.0))
    last_days = draw(st.floats(min_value=0.0, max_value=first_days))
    return CustomerState(
        customer_id=draw(st.text("abc", min_size=1, max_size=4)),
        purchases_lifetime=n,
        net_spend_lifetime=Decimal(draw(st.integers(min_value=-50, max_value=20_000))),
        first_purchase_at=NOW - timedelta(days=first_days) if n else None,
        last_purchase_at=NOW - timedelta(days=last_days) if n else None,
        features=CustomerFeatures(
            complaints={
                f"k{i}": Complaint(opened_at=NOW - timedelta(days=i))
                for i in range(draw(st.integers(min_value=0, max_value=3)))
            },
            satisfaction_latest=draw(st.integers(min_value=1, max_value=5) | st.none()),
        ),
    )


@given(st.lists(customers(), max_size=8), st.sampled_from(MODELS))
def test_batch_scores_equal_the_full_score_of_each_customer(
    states: list[CustomerState], model: FittedModel
) -> None:
    config = churn_config({})
    batch = change_scores([(s, NOW) for s in states], model, config)
    assert len(batch) == len(states)
    for state, scored in zip(states, batch, strict=True):
        full = full_score(state, NOW, model, config)
        if full is None:
            assert scored is None
            continue
        assert scored is not None
        assert math.isclose(scored.churn_probability, full.probability, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(scored.clv, full.clv, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(scored.value_at_risk, full.value_at_risk, rel_tol=1e-9, abs_tol=1e-9)
        ChangeScores.model_validate(scored.as_data())  # what the record carries is the contract


def test_a_customer_without_a_purchase_has_no_scores() -> None:
    assert change_scores([(CustomerState("c"), NOW)], MODELS[0], churn_config({})) == [None]
