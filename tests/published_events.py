"""Everything a running pipeline published, read back with CloudEvents implementations tierflow
did not write (the Python SDK's 1.x Kafka and HTTP bindings, the JavaScript SDK), and the
CloudEvents identity rule checked on it: one `source` + `id`, one event."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cloudevents.v1 import http as ce_http
from cloudevents.v1 import kafka as ce_kafka

from tests.cloudevents_js import Message, decode, install


@dataclass(frozen=True)
class Published:
    """One record or webhook request as the SDKs read it."""

    where: str  # topic name, or "webhook"
    source: str
    id: str
    type: str
    subject: str | None
    data: Any

    def same_event(self, other: Published) -> bool:
        return (self.type, self.subject, self.data) == (other.type, other.subject, other.data)


def _data(event: Any) -> Any:
    data = event.data
    return orjson.loads(data) if isinstance(data, bytes | str) else data


def from_kafka(topic: str, records: Iterable[Any]) -> list[Published]:
    """Each record through the Python SDK's 1.x Kafka binding (binary mode); the JavaScript
    SDK's Kafka binding must read it as the same event."""
    out: list[Published] = []
    messages: list[Message] = []
    for r in records:
        headers = {k: bytes(v) for k, v in r.headers}
        event = ce_kafka.from_binary(
            ce_kafka.KafkaMessage(headers=headers, key=r.key, value=r.value)
        )
        out.append(
            Published(
                topic,
                event["source"],
                event["id"],
                event["type"],
                event.get("subject"),
                _data(event),
            )
        )
        messages.append(
            Message(
                "kafka",
                {k: v.decode() for k, v in headers.items()},
                bytes(r.value).decode(),
                bytes(r.key).decode() if r.key is not None else None,
            )
        )
    _same_in_javascript(out, messages)
    return out


def from_webhooks(requests: Iterable[tuple[Mapping[str, str], bytes]]) -> list[Published]:
    """Each webhook request (headers, body) through the Python SDK's 1.x HTTP binding and the
    JavaScript SDK's `HTTP.toEvent`."""
    out: list[Published] = []
    messages: list[Message] = []
    for headers, body in requests:
        event = ce_http.from_http(dict(headers), body)
        out.append(
            Published(
                "webhook",
                event["source"],
                event["id"],
                event["type"],
                event.get("subject"),
                _data(event),
            )
        )
        messages.append(Message("http", dict(headers), body.decode()))
    _same_in_javascript(out, messages)
    return out


def _same_in_javascript(events: list[Published], messages: list[Message]) -> None:
    if not messages:
        return
    node, script = install()
    for event, decoded in zip(events, decode(node, script, messages), strict=True):
        assert decoded.ok, f"the JavaScript SDK refused {event.where} {event.id}: {decoded.error}"
        js = decoded.event
        assert (js["source"], js["id"], js["type"]) == (event.source, event.id, event.type)
        assert js.get("data") == event.data, f"{event.where} {event.id}: data read differently"


def shared_identities(events: Iterable[Published]) -> list[str]:
    """Each `source` + `id` that two different events carry (empty: none)."""
    first: dict[tuple[str, str], Published] = {}
    clashes: list[str] = []
    for event in events:
        key = (event.source, event.id)
        seen = first.setdefault(key, event)
        if not seen.same_event(event):
            clashes.append(f"{key}: {seen.type} on {seen.where} and {event.type} on {event.where}")
    return clashes
