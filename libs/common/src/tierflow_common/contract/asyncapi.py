"""AsyncAPI 3.0 document of every topic (published as docs/asyncapi.yaml by `tierflow schemas`).

Built from the same JSON Schemas as docs/schemas (contract/asyncapi_schemas.py), so the payloads
cannot drift from what the code validates. Here: which CloudEvents types travel on which topic
(TopicSettings), and which service sends and receives each.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tierflow_common.contract.asyncapi_schemas import (
    REF,
    ce_headers,
    component_schemas,
    customer_id_schema,
    dlq_headers,
    string_schema,
)
from tierflow_common.contract.customer_events import EVENT_MODELS, OVERRIDE_TYPE, OverrideData
from tierflow_common.contract.events import (
    CARE_ACTION_TYPE,
    CLASSIFICATION_CHANGED_TYPE,
    CLASSIFICATIONS_CHANGED_TYPE,
    CUSTOMER_ERASED_TYPE,
    TIER_CHANGED_TYPE,
)
from tierflow_common.contract.kafka_binding import JSON_CONTENT_TYPE
from tierflow_common.settings import TopicSettings

ASYNCAPI_VERSION = "3.0.0"


@dataclass(frozen=True)
class EventMessage:
    """One CloudEvents type on one topic: its message id, `ce_type` and data schema name."""

    name: str
    ce_type: str
    schema: str
    summary: str


def _customer_event_messages() -> list[EventMessage]:
    return [
        EventMessage(
            name=f"event_{ce_type.replace('.', '_')}",
            ce_type=ce_type,
            schema=model.model_fields["data"].annotation.__name__,  # type: ignore[union-attr]
            summary=f"A `{ce_type}` event accepted by the ingest",
        )
        for ce_type, model in EVENT_MODELS.items()
    ]


OVERRIDE = EventMessage(
    "classification_override",
    OVERRIDE_TYPE,
    OverrideData.__name__,
    "An operator's manual override (or its clearing), written by the classifier's API",
)
CLASSIFICATIONS_CHANGED = EventMessage(
    "classifications_changed",
    CLASSIFICATIONS_CHANGED_TYPE,
    "ClassificationsChangedData",
    "Every dimension one cause moved for one customer (contract version 2, published)",
)
CLASSIFICATION_CHANGED_V1 = EventMessage(
    "classification_changed_v1",
    CLASSIFICATION_CHANGED_TYPE,
    "ClassificationChangedData",
    "One dimension change (contract version 1: no longer published, still read by the notifier)",
)
CUSTOMER_ERASED = EventMessage(
    "customer_erased",
    CUSTOMER_ERASED_TYPE,
    "CustomerErasedData",
    "The customer was erased: downstream systems erase what they hold about them too",
)
TIER_CHANGED = EventMessage(
    "tier_changed",
    TIER_CHANGED_TYPE,
    "ClassificationChangedData",
    "A value-tier change; its CloudEvents id is the change id",
)
CARE_ACTION = EventMessage(
    "care_action",
    CARE_ACTION_TYPE,
    "CareActionData",
    "A care action the notifier decided on (the same data is every webhook's body)",
)


def _event_message(message: EventMessage, *, upstream: bool = False) -> dict[str, Any]:
    return {
        "name": message.name,
        "title": message.ce_type,
        "summary": message.summary,
        "contentType": JSON_CONTENT_TYPE,
        "headers": ce_headers(message.ce_type, upstream=upstream),
        "payload": {"$ref": REF + message.schema},
        "bindings": {
            "kafka": {
                "key": {"$ref": REF + "CustomerId"},
                "bindingVersion": "0.5.0",
            }
        },
    }


def _dead_letter_message(name: str, sources: list[str]) -> dict[str, Any]:
    source = " or ".join(sources)
    return {
        "name": name,
        "title": f"dead letter of {source}",
        "summary": f"A record of {' or '.join(f'`{s}`' for s in sources)} its consumer could "
        "not apply, with the reason",
        "description": "Key, value and headers of the original record, byte for byte (the "
        "value may not even be JSON: that can be the reason), plus the `dlq_*` headers.",
        "contentType": "application/octet-stream",
        "headers": dlq_headers(),
        "payload": {"description": "The original record's value, unchanged"},
        "bindings": {
            "kafka": {
                "key": string_schema("The original record's key (the customer id when it had one)"),
                "bindingVersion": "0.5.0",
            }
        },
    }


@dataclass(frozen=True)
class Channel:
    key: str  # the TopicSettings field naming the topic (TOPIC_<KEY> overrides it)
    description: str
    messages: list[str]
    # The TopicSettings fields of the topics whose records it holds.
    dead_letters_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    key: str
    service: str
    action: str  # send | receive
    channel: str
    messages: list[str]
    summary: str


def _channels(customer: list[str]) -> list[Channel]:
    return [
        Channel(
            "customer_events",
            "Accepted customer events, one record per event, and operators' overrides",
            [*customer, OVERRIDE.name],
        ),
        Channel(
            "classification_changed",
            "Classification changes, one record per customer and cause, and erasures",
            ["classifications_changed", "customer_erased", "classification_changed_v1"],
        ),
        Channel(
            "tier_changed",
            "Value-tier changes: the stable contract for downstream services (consumed "
            "outside tierflow)",
            ["tier_changed"],
        ),
        Channel(
            "care_actions",
            "Care actions (consumed outside tierflow; also webhooks)",
            ["care_action"],
        ),
        Channel(
            "classifier_dlq",
            "customer-events records the classifier dead-lettered (read by operators)",
            ["dead_letter"],
            dead_letters_of=("customer_events",),
        ),
        Channel(
            "notifier_dlq",
            "Records of customer-classification-changed or customer-events the notifier "
            "dead-lettered (read by operators)",
            ["dead_letter"],
            dead_letters_of=("classification_changed", "customer_events"),
        ),
    ]


def _operations(customer: list[str]) -> list[Operation]:
    return [
        Operation(
            "ingest_send_customer_events",
            "ingest",
            "send",
            "customer_events",
            customer,
            "Publish every accepted event (POST /v1/events, :batch, :bulk)",
        ),
        Operation(
            "classifier_send_overrides",
            "classifier",
            "send",
            "customer_events",
            [OVERRIDE.name],
            "Publish operators' overrides (POST/DELETE on the classifier's override routes), "
            "ordered with the customer's other events",
        ),
        Operation(
            "classifier_receive_customer_events",
            "classifier",
            "receive",
            "customer_events",
            [*customer, OVERRIDE.name],
            "Classify customers from their events and overrides (group CLASSIFIER_GROUP_ID)",
        ),
        Operation(
            "notifier_receive_customer_events",
            "notifier",
            "receive",
            "customer_events",
            [*customer, OVERRIDE.name],
            "Keep the notifier's contact table from purchases, profiles and interactions; "
            "other types are skipped (group NOTIFIER_EVENTS_GROUP_ID)",
        ),
        Operation(
            "classifier_send_classification_changed",
            "classifier",
            "send",
            "classification_changed",
            ["classifications_changed", "customer_erased"],
            "Publish classification changes and erasures (through the outbox)",
        ),
        Operation(
            "notifier_receive_classification_changed",
            "notifier",
            "receive",
            "classification_changed",
            ["classifications_changed", "customer_erased", "classification_changed_v1"],
            "Decide care actions on changes, erase on erasures (group NOTIFIER_GROUP_ID)",
        ),
        Operation(
            "classifier_send_tier_changed",
            "classifier",
            "send",
            "tier_changed",
            ["tier_changed"],
            "Publish value-tier changes (through the outbox)",
        ),
        Operation(
            "notifier_send_care_actions",
            "notifier",
            "send",
            "care_actions",
            ["care_action"],
            "Publish created care actions (through the outbox)",
        ),
        Operation(
            "classifier_send_dead_letters",
            "classifier",
            "send",
            "classifier_dlq",
            ["dead_letter"],
            "Dead-letter customer events the classifier cannot apply",
        ),
        Operation(
            "notifier_send_dead_letters",
            "notifier",
            "send",
            "notifier_dlq",
            ["dead_letter"],
            "Dead-letter records the notifier cannot apply",
        ),
    ]


def _servers() -> dict[str, Any]:
    return {
        "production": {
            "host": "kafka-1:9092",
            "protocol": "kafka-secure",
            "description": "Apache Kafka (KAFKA_BOOTSTRAP_SERVERS), SASL_SSL or SSL with an "
            "optional client certificate; see deploy/README.md",
            "security": [
                {"$ref": "#/components/securitySchemes/scram"},
                {"$ref": "#/components/securitySchemes/mtls"},
            ],
        },
        "development": {
            "host": "127.0.0.1:9092",
            "protocol": "kafka",
            "description": "The embedded Tansu broker of `tierflow run`, plaintext",
        },
    }


def asyncapi_document(topics: TopicSettings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a plain dict, as YAML/JSON would hold it)."""
    # The default names (the public contract), not whatever TOPIC_* this shell has set.
    topics = topics or TopicSettings.model_construct()
    events = _customer_event_messages()
    customer = [m.name for m in events]
    messages: dict[str, Any] = {m.name: _event_message(m, upstream=True) for m in events}
    messages[OVERRIDE.name] = _event_message(OVERRIDE)
    for m in (CLASSIFICATIONS_CHANGED, CUSTOMER_ERASED, CLASSIFICATION_CHANGED_V1, TIER_CHANGED):
        messages[m.name] = _event_message(m)
    messages[CARE_ACTION.name] = _event_message(CARE_ACTION)
    channels: dict[str, Any] = {}
    for ch in _channels(customer):
        address = getattr(topics, ch.key)
        sources = [getattr(topics, key) for key in ch.dead_letters_of]
        channels[ch.key] = {
            "address": address,
            "title": address,
            "description": f"{ch.description}. Name: TOPIC_{ch.key.upper()}.",
            "messages": {
                name: (
                    _dead_letter_message(f"{ch.key}_dead_letter", sources)
                    if name == "dead_letter"
                    else {"$ref": f"#/components/messages/{name}"}
                )
                for name in ch.messages
            },
            "bindings": {"kafka": {"partitions": topics.partitions, "bindingVersion": "0.5.0"}},
        }
    operations = {
        op.key: {
            "action": op.action,
            "channel": {"$ref": f"#/channels/{op.channel}"},
            "summary": op.summary,
            "tags": [{"name": op.service}],
            "messages": [{"$ref": f"#/channels/{op.channel}/messages/{m}"} for m in op.messages],
        }
        for op in _operations(customer)
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "tierflow event contract",
            "version": importlib.metadata.version("tierflow-common"),
            "description": "Every topic tierflow reads or writes. Records are CloudEvents 1.0 "
            "in the Kafka binding's binary mode: key = customer id, attributes in `ce_*` "
            "headers, `content-type: application/json`, the event's `data` as the value. "
            "Generated by `tierflow schemas` from the code's contract; do not edit.",
            "tags": [
                {"name": "ingest", "description": "tierflow_ingest (HTTP :8080)"},
                {"name": "classifier", "description": "tierflow_classifier (HTTP :8081)"},
                {"name": "notifier", "description": "tierflow_notifier (HTTP :8082)"},
            ],
        },
        "defaultContentType": JSON_CONTENT_TYPE,
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": {"CustomerId": customer_id_schema(), **component_schemas()},
            "messages": messages,
            "securitySchemes": {
                "scram": {
                    "type": "scramSha512",
                    "description": "SASL SCRAM-SHA-512 (also SCRAM-SHA-256 or PLAIN: "
                    "KAFKA_SASL_MECHANISM) over TLS",
                },
                "mtls": {
                    "type": "X509",
                    "description": "TLS client certificate (KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE)",
                },
            },
        },
    }


def render_asyncapi(document: dict[str, Any]) -> str:
    header = "# Generated by `tierflow schemas` (make schemas) from the contract: do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def write_asyncapi(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_asyncapi(asyncapi_document()))
    return path
