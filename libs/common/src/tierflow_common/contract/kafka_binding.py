"""CloudEvents Kafka protocol binding, binary content mode, via the CloudEvents SDK.

Record key = customer id (the CloudEvents `subject`), attributes in `ce_*` headers,
`content-type: application/json`, the JSON `data` as the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tierflow_common.exceptions import PoisonRecord

_FORMAT = JSONFormat()
JSON_CONTENT_TYPE = "application/json"
_JSON_CONTENT_TYPE_BYTES = JSON_CONTENT_TYPE.encode()


@dataclass(frozen=True)
class EmittedEvent:
    """An event tierflow publishes: everything needed to build its Kafka record."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KafkaRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def _ce_time(value: datetime) -> bytes:
    text = value.isoformat()
    return (text[:-6] + "Z" if text.endswith("+00:00") else text).encode()


def binary_headers(
    *, id: str, type: str, source: str, subject: str, time: datetime
) -> list[tuple[str, bytes]]:
    """The `ce_*` headers of a binary-mode record, in the order `encode_event` gives them: the
    same bytes as the SDK's `to_binary` (a test checks). Built directly because this runs once
    per event on the ingest's hot path."""
    return [
        ("ce_id", id.encode()),
        ("ce_source", source.encode()),
        ("ce_specversion", b"1.0"),
        ("ce_subject", subject.encode()),
        ("ce_time", _ce_time(time)),
        ("ce_type", type.encode()),
        ("content-type", _JSON_CONTENT_TYPE_BYTES),
    ]


def encode_event(event: EmittedEvent, *, data_json: bytes | None = None) -> KafkaRecord:
    """Binary-mode record for an event; the same bytes as the SDK's `to_binary` (a test checks)."""
    headers = binary_headers(
        id=event.id, type=event.type, source=event.source, subject=event.subject, time=event.time
    )
    value = data_json if data_json is not None else orjson.dumps(event.data)
    return KafkaRecord(key=event.subject.encode(), value=value, headers=headers)


def encode_event_with_sdk(event: EmittedEvent) -> KafkaRecord:
    """The reference encoding through the CloudEvents SDK (used to verify `encode_event`)."""
    ce = CloudEvent(
        attributes={
            "id": event.id,
            "type": event.type,
            "source": event.source,
            "subject": event.subject,
            "time": event.time,
            "datacontenttype": JSON_CONTENT_TYPE,
        },
        data=event.data,
    )
    message = to_binary(ce, _FORMAT, key_mapper=lambda e: e.get_subject())
    key = message.key.encode() if isinstance(message.key, str) else message.key or b""
    return KafkaRecord(key=key, value=message.value, headers=sorted(message.headers.items()))


_PLAIN_HEADERS = {
    "ce_id": "id",
    "ce_source": "source",
    "ce_specversion": "specversion",
    "ce_type": "type",
    "ce_subject": "subject",
    "ce_time": "time",
    "content-type": "datacontenttype",
}
_REQUIRED = ("ce_id", "ce_source", "ce_specversion", "ce_type")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


def _plain_attributes(header_map: dict[str, bytes]) -> dict[str, Any] | None:
    """The attributes of the common, plainly valid record (the standard headers only, all
    present and non-empty, specversion 1.0, an RFC 3339 time), as the SDK would give them,
    without the SDK's per-record cost; None: let the SDK parse (and explain) it."""
    if not header_map.keys() <= _PLAIN_HEADERS.keys() or any(
        not header_map.get(h) for h in _REQUIRED
    ):
        return None
    try:
        attributes: dict[str, Any] = {
            _PLAIN_HEADERS[k]: v.decode("utf-8") for k, v in header_map.items()
        }
    except UnicodeDecodeError:
        return None
    if attributes["specversion"] != "1.0" or "" in attributes.values():
        return None
    time = attributes.get("time")
    if time is not None:
        if _RFC3339.fullmatch(time) is None:
            return None
        attributes["time"] = datetime.fromisoformat(time)
    return attributes


def decode_record(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | tuple[Any, ...]
) -> dict[str, Any]:
    """Turn a binary-mode record back into a structured CloudEvent dict.

    Raises PoisonRecord (never anything else) when the record cannot be a CloudEvent, so a
    consumer can dead-letter it with the reason.
    """
    if value is None:
        raise PoisonRecord("record has no value (tombstone)", field="value")
    header_map: dict[str, bytes] = {}
    for name, raw in headers:
        header_map[name] = raw if isinstance(raw, bytes) else bytes(raw)
    if "ce_specversion" not in header_map:
        raise PoisonRecord(
            "missing ce_specversion header: not a CloudEvents record", field="headers"
        )
    attributes = _plain_attributes(header_map)
    if attributes is None:
        try:
            ce = from_binary(KafkaMessage(headers=header_map, key=key, value=b"null"), _FORMAT)
            attributes = dict(ce.get_attributes())
        except (BaseCloudEventException, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise PoisonRecord(f"invalid CloudEvents headers: {exc}", field="headers") from exc
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord(f"value is not JSON: {exc}", field="data") from exc
    attributes.pop("partitionkey", None)
    time = attributes.get("time")
    if isinstance(time, datetime):
        attributes["time"] = time.isoformat()
    attributes["data"] = data
    return attributes
