"""The CloudEvents conformance suite's cases against the ingest and the real broker.

The cases are cloudevents/conformance `yaml/v1.yaml` and `yaml/v1.0/v1_minimum.yaml`, adapted
to tierflow's event types (tests/data/cloudevents_conformance/, each file says how), sent as
the suite's tool sends them: binary mode (`ce-*` headers, the data as the body, Content-Type the
datacontenttype) and structured mode (`application/cloudevents+json`). What the spec forbids
(forbidden.yaml) gets a 4xx problem naming the field. An accepted event's Kafka record is read
back with the CloudEvents SDK's own 1.x Kafka binding (`cloudevents.v1.kafka`), not ours.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import yaml
from cloudevents.v1.kafka import KafkaMessage, from_binary

from tests.access import api_key
from tests.integration.test_ingest_api import running
from tests.support import read_topic
from tierflow_common.auth import Role
from tierflow_common.contract.attributes import is_json_media_type
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_ingest.bootstrap import create_app
from tierflow_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration
SUITE = Path(__file__).parents[1] / "data" / "cloudevents_conformance"
STRUCTURED = "application/cloudevents+json"


@dataclass(frozen=True)
class Case:
    """One request: a conformance document in one content mode, and what must come of it."""

    name: str
    mode: str  # "binary" | "structured"
    attributes: dict[str, Any]
    extensions: dict[str, Any] = field(default_factory=dict)
    transport: dict[str, str] = field(default_factory=dict)
    data: str = ""
    status: int = 202
    field: str | None = None

    def request(self) -> tuple[dict[str, str], bytes]:
        """Headers and body as the suite's tool sends this case."""
        attrs = {k: v for k, v in self.attributes.items() if k != "datacontenttype"}
        media = self.attributes.get("datacontenttype")
        if self.mode == "binary":
            headers = {**self.transport, "content-type": media or "application/json"}
            for name, value in {**attrs, **self.extensions}.items():
                text = value if isinstance(value, str) else str(value)
                # HTTP binding §3.1.3.2: what is not printable ASCII is percent-encoded
                # (a literal `%` is kept: some cases send an encoding on purpose).
                headers[f"ce-{name}"] = quote(text, safe="".join(map(chr, range(0x21, 0x7F))))
            return headers, self.data.encode()
        event: dict[str, Any] = {**attrs, **self.extensions}
        if media is not None:
            event["datacontenttype"] = media
        json_data = media is None or is_json_media_type(media)
        event["data"] = orjson.loads(self.data) if json_data else self.data
        return {**self.transport, "content-type": STRUCTURED}, orjson.dumps(event)


def _documents(name: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((SUITE / name).read_text()) if d]


def _attributes(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs = dict(doc["ContextAttributes"])
    extensions = attrs.pop("Extensions", {}) or {}
    # YAML reads the suite's timestamps as datetimes: on the wire they are RFC 3339 text.
    return {k: v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else str(v)
            for k, v in attrs.items()}, extensions  # fmt: skip


def v1_cases() -> list[Case]:
    out = []
    for i, doc in enumerate(_documents("v1.yaml")):
        attrs, extensions = _attributes(doc)
        out.append(
            Case(
                f"v1.yaml#{i} {doc['Mode']}",
                doc["Mode"],
                attrs,
                extensions,
                doc.get("TransportExtensions") or {},
                doc["Data"],
            )
        )
    return out


def minimum_cases() -> list[Case]:
    out = []
    for doc in _documents("v1_minimum.yaml"):
        attrs, extensions = _attributes(doc)
        for mode in ("binary", "structured"):
            out.append(
                Case(
                    f"{attrs['id']} {mode}",
                    mode,
                    {**attrs, "id": f"{attrs['id']}-{mode}"},
                    extensions,
                    data=doc["Data"],
                    status=doc["Expect"][mode],
                    field=doc["Expect"].get("field"),
                )
            )
    return out


VALID = {
    "specversion": "1.0",
    "type": "purchase",
    "id": "forbidden-0",
    "source": "shop",
    "subject": "customer-42",
    "time": "2018-04-05T03:56:24Z",
}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
VALID_DATA = '{"order_id": "1", "amount": "1.00", "currency": "USD"}'


def forbidden_cases() -> list[Case]:
    out = []
    for i, doc in enumerate(_documents("forbidden.yaml")[0]):
        modes = [m for m in ("structured", "binary") if m in doc] or ["structured", "binary"]
        for mode in modes:
            attrs = {**VALID, "id": f"forbidden-{i}-{mode}"}
            for name in doc.get("remove", ()):
                del attrs[name]
            extensions: dict[str, Any] = {}
            for header, value in copy.deepcopy(doc.get(mode) or {}).items():
                name = header.removeprefix("ce-")
                (attrs if name in VALID else extensions)[name] = value
            out.append(
                Case(
                    f"{doc['name']} ({mode})",
                    mode,
                    attrs,
                    extensions,
                    data=VALID_DATA,
                    status=doc["status"],
                    field=doc["field"],
                )
            )
    return out


@pytest.fixture
async def ingest(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    key = await api_key(database, {Role.INGEST})  # any source: the suite's sources
    app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=IngestSettings(keys_refresh_s=0.2, receipt_retention_days=36500),
    )
    async for client in running(app, key):
        yield client


async def answers(client: httpx.AsyncClient, cases: list[Case]) -> list[str]:
    """What differs from each case's expectation (empty: every case answered as it should)."""
    wrong = []
    for case in cases:
        headers, body = case.request()
        resp = await client.post("/v1/events", content=body, headers=headers)
        if resp.status_code != case.status:
            wrong.append(f"{case.name}: {resp.status_code} {resp.text}, not {case.status}")
        elif case.status >= 400:
            problem = resp.json()
            fields = [e["field"] for e in problem.get("errors", [])]
            if (
                resp.headers["content-type"] != "application/problem+json"
                or case.field not in fields
            ):
                wrong.append(f"{case.name}: names {fields}, not {case.field!r}: {problem}")
    return wrong


def independent(record: dict[str, Any]) -> Any:
    """The record as the CloudEvents SDK's 1.x Kafka binding reads it."""
    return from_binary(
        KafkaMessage(headers=record["headers"], key=record["key"], value=record["value"])
    )


async def test_the_v1_suite_is_accepted_in_both_modes_with_its_extensions_kept(
    ingest: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    cases = v1_cases()
    assert [c.mode for c in cases] == ["binary", "structured"]
    assert await answers(ingest, cases) == []
    records = await read_topic(kafka_settings, topics.customer_events, expect=2)
    assert len(records) == 2
    for record in records:
        event = independent(record)
        assert event["specversion"] == "1.0"
        assert (event["id"], event["source"]) == ("4321-4321-4321", "/mycontext/subcontext")
        assert (event["type"], event["subject"]) == ("purchase", "customer-42")
        assert event["time"] == "2018-04-05T03:56:24Z"
        assert event["comexampleextension1"] == "value"
        assert event["comexampleextension2"] == '{"othervalue": 5}\n'
        assert event["datacontenttype"] == "application/json"
        assert event.data == {"order_id": "4321", "amount": "12.50", "currency": "USD"}
        # A transport header is not an attribute: not forwarded.
        assert not any(h.startswith("ce_user") for h in record["headers"])
        assert record["key"] == b"customer-42"


async def test_the_minimum_suite_in_both_modes(
    ingest: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    cases = minimum_cases()
    assert await answers(ingest, cases) == []
    accepted = [c for c in cases if c.status == 202]
    records = await read_topic(kafka_settings, topics.customer_events, expect=len(accepted))
    events = {e["id"]: e for e in map(independent, records)}
    assert sorted(events) == sorted(c.attributes["id"] for c in accepted)
    for case in accepted:
        event = events[case.attributes["id"]]
        assert event["source"] == case.attributes["source"]
        assert event["datacontenttype"] == "application/json; charset=utf-8"
        assert event.data == orjson.loads(case.data)


async def test_what_the_spec_forbids_is_a_problem_naming_the_field(
    ingest: httpx.AsyncClient,
) -> None:
    cases = forbidden_cases()
    assert len(cases) > 20
    # And tierflow's own limit (docs/cloudevents.md): 32 extensions pass, a 33rd is named.
    many = {f"ext{i}": "x" for i in range(33)}
    cases += [
        Case("32 extensions", "binary", {**VALID, "id": "many-32"}, dict(list(many.items())[:32]),
             data=VALID_DATA),
        Case("33 extensions", "structured", {**VALID, "id": "many-33"}, many, data=VALID_DATA,
             status=422, field="ext32"),
    ]  # fmt: skip
    assert await answers(ingest, cases) == []


async def test_extension_types_and_dataschema_travel_as_ce_headers(
    ingest: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    """Structured mode keeps JSON types (integer, boolean), binary mode strings; on the record
    each is its canonical string. A percent-encoded header is decoded."""
    structured = Case(
        "typed",
        "structured",
        {**VALID, "id": "typed-1", "dataschema": "https://schemas.example.com/p.json"},
        {"comexampleint": 42, "comexamplebool": True, "traceparent": TRACEPARENT},
        data=VALID_DATA,
    )  # fmt: skip
    binary = Case("encoded", "binary", {**VALID, "id": "typed-2"}, {"comexample": "Grüße 🌎"},
                  data=VALID_DATA)  # fmt: skip
    assert binary.request()[0]["ce-comexample"] == "Gr%C3%BC%C3%9Fe%20%F0%9F%8C%8E"
    assert await answers(ingest, [structured, binary]) == []
    records = await read_topic(kafka_settings, topics.customer_events, expect=2)
    events = {e["id"]: e for e in map(independent, records)}
    typed = events["typed-1"]
    assert (typed["comexampleint"], typed["comexamplebool"]) == ("42", "true")
    assert typed["traceparent"] == structured.extensions["traceparent"]
    assert typed["dataschema"] == "https://schemas.example.com/p.json"
    assert events["typed-2"]["comexample"] == "Grüße 🌎"
