"""An event dated at the end of the calendar is refused by the contract, naming `time`: the
classifier's deadlines and ledger weeks would overflow on it (it used to block its partition)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tierflow_common.contract.customer_events import LATEST_EVENT_TIME, parse_topic_event


def purchase(time: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "e1",
        "source": "shop",
        "type": "purchase",
        "subject": "c1",
        "time": time,
        "data": {"order_id": "o1", "amount": "10.00", "currency": "USD"},
    }


@pytest.mark.parametrize("time", ["9999-12-31T23:59:00Z", "9000-01-01T00:00:00Z"])
def test_a_time_at_the_end_of_the_calendar_is_refused_naming_the_field(time: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_topic_event(purchase(time))
    error = refused.value.errors(include_url=False)[0]
    assert error["loc"][-1] == "time"
    assert f"{LATEST_EVENT_TIME:%Y-%m-%d}" in error["msg"]


def test_the_latest_accepted_time_still_parses() -> None:
    assert parse_topic_event(purchase("8999-12-31T23:59:59Z")).time.year == 8999
