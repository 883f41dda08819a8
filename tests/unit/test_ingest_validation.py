"""Ingest-side validation: every rejection names a field path and a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.unit.test_contract import purchase
from tierflow_ingest.domain.validation import FieldError, validate_event

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)


def errors(obj: object) -> list[FieldError]:
    result = validate_event(obj, now=NOW, max_future_skew=SKEW)
    assert isinstance(result, list), f"expected rejection, got {result!r}"
    return result


def test_valid_purchase_passes() -> None:
    result = validate_event(purchase(), now=NOW, max_future_skew=SKEW)
    assert not isinstance(result, list)
    assert result.subject == "c-1"


def test_unknown_type_is_named() -> None:
    (err,) = errors(purchase(type="teleport"))
    assert (err.field, err.code) == ("type", "unknown_type")
    assert "teleport" in err.reason


def test_negative_amount_points_at_data_amount() -> None:
    (err,) = errors(purchase(data={"order_id": "1", "amount": "-5", "currency": "USD"}))
    assert err.field == "data.amount"
    assert "greater than or equal to 0" in err.reason


def test_missing_customer_id_points_at_subject() -> None:
    event = purchase()
    del event["subject"]
    (err,) = errors(event)
    assert (err.field, err.code) == ("subject", "missing")


def test_far_future_time_is_rejected_but_small_clock_skew_is_not() -> None:
    (err,) = errors(purchase(time=(NOW + timedelta(hours=1)).isoformat()))
    assert (err.field, err.code) == ("time", "time_in_future")
    ok = validate_event(
        purchase(time=(NOW + timedelta(minutes=4)).isoformat()), now=NOW, max_future_skew=SKEW
    )
    assert not isinstance(ok, list)


def test_non_object_body_is_rejected() -> None:
    (err,) = errors([1, 2])
    assert err.field == "(body)"


def test_several_errors_are_all_reported() -> None:
    bad = purchase(subject="", data={"order_id": "1", "amount": "x", "currency": "dollars"})
    fields = {e.field for e in errors(bad)}
    assert fields == {"subject", "data.amount", "data.currency"}
