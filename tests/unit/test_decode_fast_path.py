"""decode_record's fast path for plain records gives exactly what the CloudEvents SDK gives."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from tierflow_common.contract.kafka_binding import decode_record
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


def test_records_with_other_headers_still_decode_through_the_sdk() -> None:
    h = headers("2026-01-01T00:00:00Z", ce_traceparent=b"00-abc-def-01")
    got = decode_record(b"alice", VALUE, h)
    assert got == via_sdk(b"alice", VALUE, h)
    assert got["traceparent"] == "00-abc-def-01"


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
