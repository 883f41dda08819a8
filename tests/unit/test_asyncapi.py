"""docs/asyncapi.yaml: the official AsyncAPI parser accepts it, and it says what the code does.

The parser is npm's `@asyncapi/parser`, pinned by tests/asyncapi/package-lock.json and installed
there (`npm ci`, once) by the fixture below: node and npm must be on the PATH.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.structs import ConsumerRecord
from jsonschema import Draft7Validator  # type: ignore[import-untyped]

from tests.npm import installed_node
from tierflow_common.consumer import DeadLetter, dead_letter_record
from tierflow_common.contract.asyncapi import asyncapi_document, render_asyncapi
from tierflow_common.contract.customer_events import EVENT_MODELS, OVERRIDE_TYPE, OverrideData
from tierflow_common.contract.events import (
    CARE_ACTION_TYPE,
    CLASSIFICATION_CHANGED_TYPE,
    CLASSIFICATIONS_CHANGED_TYPE,
    CUSTOMER_ERASED_TYPE,
    TIER_CHANGED_TYPE,
    CareActionData,
    ClassificationChangedData,
    ClassificationsChangedData,
    CustomerErasedData,
    parse_customer_event,
)
from tierflow_common.contract.kafka_binding import EmittedEvent, encode_event
from tierflow_common.contract.schemas import contract_schemas
from tierflow_common.settings import TopicSettings
from tierflow_ingest.adapters.publisher import to_record

ROOT = Path(__file__).resolve().parents[2]
# The official parser run on a file: (exit code, its diagnostics and a summary, one per line).
Parse = Callable[[Path], tuple[int, list[dict[str, Any]]]]
PUBLISHED = ROOT / "docs" / "asyncapi.yaml"
PARSER_DIR = ROOT / "tests" / "asyncapi"

# Every CloudEvents type on every topic, and the contract model of its data.
DATA_MODELS: dict[str, Any] = {
    **{t: m.model_fields["data"].annotation for t, m in EVENT_MODELS.items()},
    OVERRIDE_TYPE: OverrideData,
    CLASSIFICATIONS_CHANGED_TYPE: ClassificationsChangedData,
    CLASSIFICATION_CHANGED_TYPE: ClassificationChangedData,
    CUSTOMER_ERASED_TYPE: CustomerErasedData,
    TIER_CHANGED_TYPE: ClassificationChangedData,
    CARE_ACTION_TYPE: CareActionData,
}


@pytest.fixture(scope="module")
def parse() -> Parse:
    """A function: AsyncAPI document file → (exit code, diagnostics) from the official parser."""
    node = installed_node(PARSER_DIR, "the official AsyncAPI parser")

    def run(path: Path) -> tuple[int, list[dict[str, Any]]]:
        done = subprocess.run(
            [node, str(PARSER_DIR / "parse.mjs"), str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return done.returncode, lines

    return run


def published() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(PUBLISHED.read_text())
    return document


def resolve(node: Any, root: dict[str, Any]) -> Any:
    """`node` with every local `$ref` replaced by what it points at (the contract has no
    recursive schemas)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, root)
        return {k: resolve(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, root) for v in node]
    return node


def test_the_official_parser_accepts_the_document(parse: Parse) -> None:
    code, lines = parse(PUBLISHED)
    errors = [d for d in lines if d.get("severity") == 0]
    assert errors == []
    assert code == 0
    (summary,) = [d for d in lines if "channels" in d]
    assert sorted(summary["channels"]) == sorted(TopicSettings.model_construct().all_topics())


def test_the_parser_refuses_an_operation_on_a_message_of_another_topic(
    parse: Parse, tmp_path: Path
) -> None:
    broken = copy.deepcopy(published())
    broken["operations"]["ingest_send_customer_events"]["messages"] = [
        {"$ref": "#/channels/care_actions/messages/care_action"}
    ]
    path = tmp_path / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(broken))
    code, lines = parse(path)
    assert code == 1
    assert any(d.get("severity") == 0 for d in lines), lines


def test_the_published_file_is_what_the_generator_writes() -> None:
    assert PUBLISHED.read_text() == render_asyncapi(asyncapi_document()), (
        "docs/asyncapi.yaml is stale: run `make schemas`"
    )


def test_every_topic_is_a_channel_under_its_configured_name() -> None:
    names: dict[str, Any] = {
        name: f"prod.{name}"
        for name, field in TopicSettings.model_fields.items()
        if field.annotation is str
    }
    renamed = TopicSettings.model_construct(**names)
    for topics in (TopicSettings.model_construct(), renamed):
        addresses = [ch["address"] for ch in asyncapi_document(topics)["channels"].values()]
        assert sorted(addresses) == sorted(topics.all_topics())


def _messages(document: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    return [resolve(m, document) for m in document["channels"][channel]["messages"].values()]


def test_every_event_type_has_the_contracts_payload_schema_on_its_topic() -> None:
    document = published()
    on_topics = {
        "customer_events": {*EVENT_MODELS, OVERRIDE_TYPE},
        "classification_changed": {
            CLASSIFICATIONS_CHANGED_TYPE,
            CUSTOMER_ERASED_TYPE,
            CLASSIFICATION_CHANGED_TYPE,
        },
        "tier_changed": {TIER_CHANGED_TYPE},
        "care_actions": {CARE_ACTION_TYPE},
    }
    for channel, types in on_topics.items():
        found = {}
        for message in _messages(document, channel):
            ce_type = message["headers"]["properties"]["ce_type"]["const"]
            found[ce_type] = message["payload"]
        assert set(found) == types, channel
        for ce_type, payload in found.items():
            contract = DATA_MODELS[ce_type].model_json_schema(by_alias=True)
            inlined = resolve(contract, contract)
            inlined.pop("$defs", None)
            assert payload == inlined, f"{ce_type} on {channel}"


def test_every_published_data_schema_is_the_payload_of_a_message() -> None:
    """A new event type in the contract (a docs/schemas file, or a `data` of the customer-event
    union) shows up here until asyncapi.py gives it a message on its topic."""
    document = published()
    payloads = {
        m["payload"]["$ref"].split("/")[-1] for m in document["components"]["messages"].values()
    }
    named = {s["title"] for s in contract_schemas().values() if "title" in s}
    union = contract_schemas()["customer-event.schema.json"]
    named |= {
        union["$defs"][event]["properties"]["data"]["$ref"].split("/")[-1]
        for event in [ref["$ref"].split("/")[-1] for ref in union["oneOf"]]
    }
    assert named - payloads == set()


def test_a_record_the_code_encodes_matches_its_message() -> None:
    document = published()
    (tier,) = _messages(document, "tier_changed")
    data: dict[str, Any] = {
        "customer_id": "c-1",
        "dimension": "value_tier",
        "from": None,
        "to": "regular",
        "reason": "purchases_lifetime >= 1",
        "explanation": {},
        "cause": "event:shop/order-1",
        "effective_at": "2026-01-01T10:00:00Z",
        "rule_set_version": "v1",
    }
    ClassificationChangedData.model_validate(data)
    record = encode_event(
        EmittedEvent(
            id="chg-1",
            type=TIER_CHANGED_TYPE,
            source="tierflow/classifier",
            subject="c-1",
            time=datetime(2026, 1, 1, 10, tzinfo=UTC),
            data=data,
        )
    )
    headers = {name: value.decode() for name, value in record.headers}
    assert list(Draft7Validator(tier["headers"]).iter_errors(headers)) == []
    assert list(Draft7Validator(tier["payload"]).iter_errors(json.loads(record.value))) == []
    key = tier["bindings"]["kafka"]["key"]
    assert list(Draft7Validator(key).iter_errors(record.key.decode())) == []
    assert set(tier["headers"]["required"]) == set(headers)
    wrong = {**headers, "ce_type": CARE_ACTION_TYPE}
    assert list(Draft7Validator(tier["headers"]).iter_errors(wrong)) != []


def test_an_accepted_event_with_extensions_matches_its_message_on_customer_events() -> None:
    """What the ingest publishes for an event carrying extension attributes (here the
    distributed-tracing ones), a dataschema and a JSON datacontenttype with parameters."""
    document = published()
    messages = {
        m["headers"]["properties"]["ce_type"]["const"]: m
        for m in _messages(document, "customer_events")
    }
    event = parse_customer_event(
        {
            "specversion": "1.0",
            "id": "order-1",
            "source": "shop",
            "type": "purchase",
            "subject": "c-1",
            "time": "2026-01-01T10:00:00Z",
            "datacontenttype": "application/json; charset=utf-8",
            "dataschema": "https://shop.example.com/schemas/purchase.json",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "comexampleextension1": "value",
            "priority": 3,
            "data": {"order_id": "1", "amount": "12.50", "currency": "EUR"},
        }
    )
    record = to_record(event)
    headers = {name: value.decode() for name, value in record.headers}
    assert {"ce_traceparent", "ce_comexampleextension1", "ce_dataschema"} <= set(headers)
    message = messages["purchase"]
    assert list(Draft7Validator(message["headers"]).iter_errors(headers)) == []
    payload = json.loads(record.value)
    assert list(Draft7Validator(message["payload"]).iter_errors(payload)) == []
    bad = {**headers, "ce_traceparent": "not-a-trace"}
    assert list(Draft7Validator(message["headers"]).iter_errors(bad)) != []


def test_dead_letter_headers_are_the_ones_the_consumer_writes() -> None:
    document = published()
    original = [("ce_id", b"e-1"), ("ce_type", b"purchase")]
    record = ConsumerRecord(
        "customer-events", 3, 41, 0, 0, b"c-1", b"not json", None, 3, 8, original
    )
    dead = dead_letter_record(DeadLetter(record, "value is not JSON", "data"), "g")
    headers = {name: value.decode() for name, value in dead.headers}
    for channel in ("classifier_dlq", "notifier_dlq"):
        (message,) = _messages(document, channel)
        schema = message["headers"]
        assert set(schema["required"]) == set(headers) - {n for n, _ in original}, channel
        assert list(Draft7Validator(schema).iter_errors(headers)) == [], channel


def test_each_service_sends_to_and_receives_from_its_topics() -> None:
    operations = published()["operations"].values()
    roles = {
        (op["tags"][0]["name"], op["action"], op["channel"]["$ref"].split("/")[-1])
        for op in operations
    }
    assert roles == {
        ("ingest", "send", "customer_events"),
        ("classifier", "receive", "customer_events"),
        ("classifier", "send", "customer_events"),
        ("notifier", "receive", "customer_events"),
        ("classifier", "send", "classification_changed"),
        ("notifier", "receive", "classification_changed"),
        ("classifier", "send", "tier_changed"),
        ("notifier", "send", "care_actions"),
        ("classifier", "send", "classifier_dlq"),
        ("notifier", "send", "notifier_dlq"),
    }
