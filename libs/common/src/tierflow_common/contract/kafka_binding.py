"""CloudEvents Kafka protocol binding, binary content mode, via the CloudEvents SDK.

Record key = customer id (the CloudEvents `subject`), attributes in `ce_*` headers,
`content-type: application/json`, the JSON `data` as the value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tierflow_common.contract.attributes import header_text
from tierflow_common.exceptions import PoisonRecord
from tierflow_common.trace_context import TraceContext

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
    # Optional attributes (`dataschema`, extensions) beyond these: each a `ce_*` header.
    attributes: Mapping[str, str | int | bool] = field(default_factory=dict)
    datacontenttype: str | None = None  # None: application/json
    # The trace it belongs to: kept on its outbox row, written as ce_traceparent by the relay.
    trace: TraceContext | None = field(default=None, compare=False)


@dataclass(frozen=True)
class KafkaRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def _ce_time(value: datetime) -> bytes:
    text = value.isoformat()
    return (text[:-6] + "Z" if text.endswith("+00:00") else text).encode()


def binary_headers(
    *,
    id: str,
    type: str,
    source: str,
    subject: str,
    time: datetime,
    attributes: Mapping[str, str | int | bool] | None = None,
    datacontenttype: str | None = None,
) -> list[tuple[str, bytes]]:
    """The `ce_*` headers of a binary-mode record, sorted by name as `encode_event` gives them:
    the same bytes as the SDK's `to_binary` (a test checks). Built directly because this runs
    once per event on the ingest's hot path. `attributes` (`dataschema`, extensions) add a
    `ce_<name>` header each, the value as the spec's canonical string."""
    headers = [
        ("ce_id", id.encode()),
        ("ce_source", source.encode()),
        ("ce_specversion", b"1.0"),
        ("ce_subject", subject.encode()),
        ("ce_time", _ce_time(time)),
        ("ce_type", type.encode()),
        (
            "content-type",
            _JSON_CONTENT_TYPE_BYTES if datacontenttype is None else datacontenttype.encode(),
        ),
    ]
    if attributes:
        headers += [("ce_" + name, header_text(v).encode()) for name, v in attributes.items()]
        headers.sort()
    return headers


def encode_event(event: EmittedEvent, *, data_json: bytes | None = None) -> KafkaRecord:
    """Binary-mode record for an event; the same bytes as the SDK's `to_binary` (a test checks)."""
    headers = binary_headers(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        time=event.time,
        attributes=event.attributes,
        datacontenttype=event.datacontenttype,
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
            "datacontenttype": event.datacontenttype or JSON_CONTENT_TYPE,
            **{name: header_text(v) for name, v in event.attributes.items()},
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


# An extension (or `dataschema`) header the SDK reads as an attribute of the same name and
# accepts: lower-case `ce_<a-z0-9>`, not a member the SDK treats otherwise.
_EXTENSION_HEADER = re.compile(r"ce_[a-z0-9]+")
_NOT_EXTENSIONS = frozenset({"ce_data", "ce_datacontenttype"})


def _is_extension_header(name: str) -> bool:
    return _EXTENSION_HEADER.fullmatch(name) is not None and name not in _NOT_EXTENSIONS


def _plain_attributes(header_map: dict[str, bytes]) -> dict[str, Any] | None:
    """The attributes of the common, plainly valid record (the standard headers and any
    extension headers, all non-empty, the required ones present, specversion 1.0, an RFC 3339
    time), as the SDK would give them, without the SDK's per-record cost; None: let the SDK
    parse (and explain) it."""
    names = header_map.keys()
    if not names <= _PLAIN_HEADERS.keys() and not all(
        _is_extension_header(k) for k in names - _PLAIN_HEADERS.keys()
    ):
        return None
    if any(not header_map.get(h) for h in _REQUIRED):
        return None
    try:
        attributes: dict[str, Any] = {
            _PLAIN_HEADERS.get(k) or k[3:]: v.decode("utf-8") for k, v in header_map.items()
        }
    except UnicodeDecodeError:
        return None
    if attributes["specversion"] != "1.0" or "" in attributes.values():
        return None
    time = attributes.get("time")
    if time is not None:
        instant = parse_instant(time)
        if instant is None:  # not RFC 3339, or no real instant (month 13): the SDK decides
            return None
        attributes["time"] = instant
    return attributes


@functools.lru_cache(maxsize=4096)
def parse_instant(text: str) -> datetime | None:
    """An RFC 3339 date-time with an offset (at most microseconds) as an aware datetime, None
    for anything else. Cached: a batch's records often share their time (one cause, several
    changes), and the same text is in the header and in the data."""
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # shaped right, yet no instant: month 13, hour 24, second 60, ...
        return None


_PLAIN_NAMES = frozenset(_PLAIN_HEADERS)
_ENCODED_NAMES = (
    "ce_id",
    "ce_source",
    "ce_specversion",
    "ce_subject",
    "ce_time",
    "ce_type",
    "content-type",
)
_REQUIRED_NAMES = frozenset(_REQUIRED)


def plain_event_id(headers: Sequence[tuple[str, Any]]) -> str | None:
    """The `ce_id` of a record whose headers `decode_record` takes on its plain path as they
    are: each standard or extension header at most once and no other, the required ones
    present, none empty, UTF-8, specversion 1.0, an RFC 3339 time. Such a record decodes to
    this id whenever its value is JSON, and only `ce_id` is read, so a consumer that needs
    nothing else from the headers skips building the attributes. None: ask `decode_record`,
    which may still accept the record through the SDK, or says why it is poison."""
    if len(headers) == len(_ENCODED_NAMES):
        # What encode_event writes, in its order: the names need no further checks.
        (n0, ce_id), (n1, v1), (n2, v2), (n3, v3), (n4, ce_time), (n5, v5), (n6, v6) = headers
        if (
            (n0, n1, n2, n3, n4, n5, n6) == _ENCODED_NAMES
            and type(ce_id) is type(v1) is type(v2) is type(v3) is bytes
            and type(ce_time) is type(v5) is type(v6) is bytes
            and v2 == b"1.0"
            and ce_id
            and v1
            and v3
            and v5
            and v6
            and (ce_id + v1 + v3 + ce_time + v5 + v6).isascii()
        ):
            if parse_instant(ce_time.decode()) is None:
                return None
            return ce_id.decode()
    seen: set[str] = set()
    event_id: str | None = None
    for name, raw in headers:
        if name in seen or type(raw) is not bytes or not raw:
            return None
        if name not in _PLAIN_NAMES and not _is_extension_header(name):
            return None
        seen.add(name)
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if name == "ce_id":
            event_id = raw.decode("utf-8")
        elif name == "ce_specversion":
            if raw != b"1.0":
                return None
        elif name == "ce_time" and parse_instant(raw.decode("utf-8")) is None:
            return None
    if not seen >= _REQUIRED_NAMES:
        return None
    return event_id


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
