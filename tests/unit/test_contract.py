"""The event contract: what is accepted, what is refused and why, and the Kafka binding."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from tierflow_common.contract import EmittedEvent, decode_record, encode_event, parse_customer_event
from tierflow_common.contract.events import PurchaseEvent
from tierflow_common.contract.kafka_binding import encode_event_with_sdk
from tierflow_common.exceptions import PoisonRecord


def purchase(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "specversion": "1.0",
        "id": "order-1",
        "source": "shop",
        "type": "purchase",
        "subject": "c-1",
        "time": "2025-11-20T10:00:00Z",
        "data": {"order_id": "1", "amount": "129.90", "currency": "USD"},
    }
    event.update(overrides)
    return event


def test_purchase_amount_is_an_exact_decimal_from_string_or_number() -> None:
    event = parse_customer_event(purchase())
    assert isinstance(event, PurchaseEvent)
    assert event.data.amount == Decimal("129.90")
    numeric = parse_customer_event(
        purchase(data={"order_id": "1", "amount": 0.1, "currency": "USD"})
    )
    assert isinstance(numeric, PurchaseEvent)
    assert numeric.data.amount == Decimal("0.1")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data": {"order_id": "1", "amount": "-1", "currency": "USD"}}, ("data", "amount")),
        ({"data": {"order_id": "1", "amount": "1", "currency": "usd"}}, ("data", "currency")),
        ({"data": {"order_id": "", "amount": "1", "currency": "USD"}}, ("data", "order_id")),
        ({"subject": ""}, ("subject",)),
        ({"time": "2025-11-20T10:00:00"}, ("time",)),
        ({"specversion": "0.3"}, ("specversion",)),
        ({"id": ""}, ("id",)),
    ],
)
def test_invalid_events_name_the_offending_field(
    overrides: dict[str, object], field: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        parse_customer_event(purchase(**overrides))
    # Discriminated-union locations start with the event type's tag.
    locs = {
        tuple(e["loc"])[1:] if e["loc"][0] == "purchase" else tuple(e["loc"])
        for e in info.value.errors()
    }
    assert locs == {field}


def test_kafka_binding_round_trips_attributes_in_ce_headers() -> None:
    event = EmittedEvent(
        id="x-1",
        type="tierflow.tier.changed",
        source="tierflow/classifier",
        subject="c-9",
        time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        data={"to": "VIP", "amount": "1.50"},
    )
    record = encode_event(event)
    headers = dict(record.headers)
    assert record.key == b"c-9"
    assert headers["ce_id"] == b"x-1"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["content-type"] == b"application/json"
    decoded = decode_record(record.key, record.value, record.headers)
    assert decoded["subject"] == "c-9"
    assert decoded["type"] == "tierflow.tier.changed"
    assert decoded["data"] == {"to": "VIP", "amount": "1.50"}
    assert datetime.fromisoformat(decoded["time"]) == event.time


@pytest.mark.parametrize(
    ("value", "headers", "field"),
    [
        (b"{}", [], "headers"),
        (
            b"not json",
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")],
            "data",
        ),
        (None, [("ce_specversion", b"1.0")], "value"),
        (b"{}", [("ce_specversion", b"1.0"), ("ce_time", b"yesterday")], "headers"),
    ],
)
def test_undecodable_records_are_poison_with_a_field(
    value: bytes | None, headers: list[tuple[str, bytes]], field: str
) -> None:
    with pytest.raises(PoisonRecord) as info:
        decode_record(b"k", value, headers)
    assert info.value.field == field
    assert info.value.reason


BASE = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "desk",
    "subject": "c-1",
    "time": "2025-11-20T10:00:00Z",
}


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("refund", {"order_id": "1", "amount": "5.00", "currency": "EUR", "reason": "broken"}),
        ("interaction", {"kind": "complaint", "complaint_id": "T-1", "channel": "phone"}),
        ("interaction", {"kind": "referral", "referred_customer_id": "c-2"}),
        ("feedback", {"satisfaction": 2, "comment": "slow"}),
        ("feedback", {"nps": 9}),
        ("profile", {"region": {"country": "CN", "city": "Hangzhou"}, "timezone": "Asia/Shanghai"}),
        ("profile", {"consent": {"marketing": False, "channels": {"sms": False}}}),
        (
            "purchase",
            {
                "order_id": "9",
                "amount": 10,
                "currency": "USD",
                "coupon_code": "X",
                "items": [{"sku": "a", "quantity": 2, "unit_price": "5"}],
                "channel": "store",
            },
        ),
    ],
)
def test_every_event_type_is_accepted(type_: str, data: dict[str, object]) -> None:
    event = parse_customer_event({**BASE, "type": type_, "data": data})
    assert event.type == type_


@pytest.mark.parametrize(
    ("type_", "data", "needle"),
    [
        ("interaction", {"kind": "complaint"}, "complaint_id is required"),
        ("interaction", {"kind": "referral"}, "referred_customer_id is required"),
        ("interaction", {"kind": "dance"}, "kind"),
        ("feedback", {"comment": "no score"}, "satisfaction (1-5) or nps (0-10)"),
        ("feedback", {"satisfaction": 6}, "less than or equal to 5"),
        ("profile", {}, "at least one field"),
        ("profile", {"timezone": "Moon/Base"}, "unknown IANA time zone"),
        ("profile", {"birthday": "2999-01-01"}, "birthday is in the future"),
        ("profile", {"region": {"country": "China"}}, "country"),
        ("refund", {"order_id": "1", "amount": "-1", "currency": "USD"}, "greater than or equal"),
    ],
)
def test_each_type_rejects_what_it_must(type_: str, data: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_customer_event({**BASE, "type": type_, "data": data})
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "time",
    [
        datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime.fromisoformat("2025-06-01T08:00:00+08:00"),
    ],
)
def test_fast_encoder_matches_the_cloudevents_sdk_byte_for_byte(time: datetime) -> None:
    event = EmittedEvent(
        id="é-1",
        type="purchase",
        source="shop/北京",
        subject="c-1",
        time=time,
        data={"order_id": "1", "amount": "1.50", "currency": "CNY"},
    )
    ours, sdk = encode_event(event), encode_event_with_sdk(event)
    assert (ours.key, sorted(ours.headers)) == (sdk.key, sdk.headers)
    assert orjson.loads(ours.value) == orjson.loads(sdk.value)


def test_extensions_and_dataschema_match_the_cloudevents_sdk_byte_for_byte() -> None:
    event = EmittedEvent(
        id="o-1",
        type="purchase",
        source="shop",
        subject="c-1",
        time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        data={"order_id": "1", "amount": "1.50", "currency": "CNY"},
        attributes={
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "comexampleint": 42,
            "comexamplebool": False,
            "dataschema": "https://schemas.example.com/purchase.json",
        },
        datacontenttype="application/json; charset=utf-8",
    )
    ours, sdk = encode_event(event), encode_event_with_sdk(event)
    assert (ours.key, ours.headers) == (sdk.key, sdk.headers)  # sorted, as the SDK's
    assert dict(ours.headers)["ce_comexamplebool"] == b"false"  # the canonical string


def test_a_record_with_extensions_decodes_to_the_event_the_ingest_accepted() -> None:
    """What the classifier's decoder makes of an ingest record carrying extensions: the same
    event, extensions as strings (the binding carries no types)."""
    from tierflow_ingest.adapters.publisher import to_record  # noqa: PLC0415

    sent = parse_customer_event(
        purchase(
            comexampleextension1="value",
            comexampleint=7,
            partitionkey="not-the-key",
            dataschema="urn:tierflow:purchase:1",
            datacontenttype="application/vnd.shop.purchase+json",
        )
    )
    record = to_record(sent)
    assert record.key == b"c-1"  # the customer: per-customer order is kept
    headers = dict(record.headers)
    assert headers["content-type"] == b"application/vnd.shop.purchase+json"
    assert headers["ce_dataschema"] == b"urn:tierflow:purchase:1"
    assert headers["ce_partitionkey"] == b"not-the-key"
    received = parse_customer_event(decode_record(record.key, record.value, record.headers))
    assert received.__pydantic_extra__ == {"comexampleextension1": "value", "comexampleint": "7"}
    assert received.model_dump(exclude={"comexampleint", "comexampleextension1"}) == (
        sent.model_dump(exclude={"comexampleint", "comexampleextension1", "partitionkey"})
    )
