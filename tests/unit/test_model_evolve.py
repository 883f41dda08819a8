"""`evolve` is `dataclasses.replace` for the classifier's states, without the frozen __init__:
the same value for any fields changed, the original untouched, and a misspelt field refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierflow_classifier.domain.model import CustomerState, evolve

changes = st.fixed_dictionaries(
    {},
    optional={
        "purchases_lifetime": st.integers(0, 10**6),
        "net_spend_lifetime": st.decimals(allow_nan=False, allow_infinity=False, places=2),
        "first_seen_at": st.none() | st.datetimes(timezones=st.just(UTC)),
        "features": st.dictionaries(st.text(max_size=5), st.integers()),
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
