"""decode_record's fast path for plain records gives exactly what the CloudEvents SDK gives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.contract.kafka_binding import decode_record, plain_event_id
from tierflow_common.exceptions import PoisonRecord


def via_sdk(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> dict[str, Any]:
    ce = from_binary(KafkaMessage(headers=dict(headers), key=key, value=b"null"), JSONFormat())
    attributes = dict(ce.get_attributes())
    attributes.pop("partitionkey", None)
    if "time" in attributes:
        attributes["time"] = attributes["time"].isoformat()
    attributes["data"] = orjson.loads(value)
    return attributes


def headers(time: str, **extra: bytes) -> list[tuple[str, bytes]]:
    return [
        ("ce_id", b"o-1"),
        ("ce_source", b"shop"),
        ("ce_specversion", b"1.0"),
        ("ce_subject", b"alice"),
        ("ce_time", time.encode()),
        ("ce_type", b"purchase"),
        ("content-type", b"application/json"),
        *extra.items(),
    ]


VALUE = b'{"order_id": "o-1", "amount": "12.50", "currency": "USD"}'


@pytest.mark.parametrize(
    "time",
    [
        "2026-01-01T00:00:00Z",
        "2026-01-01T08:30:00.25+08:00",
        "2026-03-01T23:59:59.123456-05:30",
        "2026-01-01 00:00:00Z",  # not RFC 3339's `T`: the SDK decides
        "20260101T000000Z",  # basic format: the SDK decides
    ],
)
def test_plain_records_decode_as_the_sdk_decodes_them(time: str) -> None:
    h = headers(time)
    assert decode_record(b"alice", VALUE, h) == via_sdk(b"alice", VALUE, h)


def test_records_with_extension_headers_take_the_plain_path() -> None:
    """Extensions (traceparent on every record, once tracing is on) keep the fast path."""
    h = headers("2026-01-01T00:00:00Z", ce_traceparent=b"00-abc-def-01", ce_dataschema=b"urn:x")
    got = decode_record(b"alice", VALUE, h)
    assert got == via_sdk(b"alice", VALUE, h)
    assert (got["traceparent"], got["dataschema"]) == ("00-abc-def-01", "urn:x")
    assert plain_event_id(h) == "o-1"


EXTENSION_NAMES = st.sampled_from(
    [
        "ce_traceparent",
        "ce_dataschema",
        "ce_partitionkey",
        "ce_comexample1",
        "ce_Upper",
        "ce_with_underscore",
        "ce_data",
        "ce_datacontenttype",
        "ce_",
        "CE_TRACEPARENT",
        "x-other",
    ]
)
EXTENSION_VALUES = st.sampled_from([b"v", b"", b"\xff", "é".encode(), b"00-abc", b"true"])


def outcome(decode: Any, h: list[tuple[str, bytes]]) -> Any:
    try:
        return decode(b"alice", VALUE, h)
    except Exception as exc:  # what decode_record turns into PoisonRecord, or PoisonRecord
        refused = PoisonRecord | BaseCloudEventException | ValueError | TypeError
        return "refused" if isinstance(exc, refused) else exc


@given(st.lists(st.tuples(EXTENSION_NAMES, EXTENSION_VALUES), max_size=4))
def test_records_with_any_extension_headers_decode_as_the_sdk_decodes_them(
    extra: list[tuple[str, bytes]],
) -> None:
    h = headers("2026-01-01T00:00:00Z") + extra
    assert outcome(decode_record, h) == outcome(via_sdk, h)
    event_id = plain_event_id(h)
    if event_id is not None:
        assert decode_record(b"alice", VALUE, h)["id"] == event_id


@pytest.mark.parametrize(
    "broken",
    [
        [("ce_source", b"")],
        [("ce_id", b"")],
        [("ce_time", b"yesterday")],
    ],
)
def test_invalid_headers_are_still_poison(broken: list[tuple[str, bytes]]) -> None:
    h = dict(headers("2026-01-01T00:00:00Z"))
    h.update(broken)
    with pytest.raises(PoisonRecord):
        decode_record(b"alice", VALUE, list(h.items()))
