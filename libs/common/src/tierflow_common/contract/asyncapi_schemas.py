"""The schemas of the AsyncAPI document (contract/asyncapi.py): the contract's JSON Schemas as
`components.schemas`, and the Kafka headers of tierflow's records.

The headers are the CloudEvents Kafka binding's (binary mode, contract/kafka_binding.py, with
the attribute rules of contract/attributes.py) and, on dead-letter topics, the `dlq_*` headers
tierflow_common.consumer.dead_letter_record adds.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from tierflow_common.contract.attributes import MAX_EXTENSION_VALUE, MAX_EXTENSIONS, NAME_PATTERN
from tierflow_common.contract.customer_events import CustomerId
from tierflow_common.contract.kafka_binding import JSON_CONTENT_TYPE
from tierflow_common.contract.schemas import contract_schemas

REF = "#/components/schemas/"

# Why each dead-letter header is there; the names are the ones dead_letter_record writes (a
# test holds the two together).
DLQ_HEADERS: dict[str, str] = {
    "dlq_reason": "Why the record could not be applied (no personal data)",
    "dlq_field": "The field at fault, e.g. `data.amount` or `headers`; empty when none",
    "dlq_consumer_group": "The consumer group that gave up on it",
    "dlq_source_topic": "The topic the record was read from",
    "dlq_source_partition": "Its partition there (decimal)",
    "dlq_source_offset": "Its offset there (decimal)",
}


def _point_refs(node: Any) -> Any:
    """A copy of a JSON Schema whose `#/$defs/X` references point at `components.schemas.X`."""
    if isinstance(node, dict):
        return {
            k: (
                REF + v.removeprefix("#/$defs/")
                if k == "$ref" and isinstance(v, str)
                else _point_refs(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_point_refs(v) for v in node]
    return node


def component_schemas() -> dict[str, dict[str, Any]]:
    """Every named schema of the contract: each published schema (by its title) and its defs.

    The customer-event union itself is left out: on Kafka the value is one event's `data`, and
    its OpenAPI-style `discriminator` object is no AsyncAPI Schema keyword."""
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, schema: dict[str, Any]) -> None:
        pointed = _point_refs(schema)
        if out.setdefault(name, pointed) != pointed:
            raise ValueError(f"two different contract schemas are both named {name}")

    for schema in contract_schemas().values():
        body = dict(schema)
        for name, sub in body.pop("$defs", {}).items():
            put(name, sub)
        if "title" in body:
            put(body["title"], body)
    return dict(sorted(out.items()))


def customer_id_schema() -> dict[str, Any]:
    """The record key and `ce_subject`: the customer id, as the contract constrains it."""
    schema = TypeAdapter(CustomerId).json_schema()
    return {**schema, "description": "The customer id (the record key and CloudEvents subject)"}


def string_schema(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


_TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def ce_headers(ce_type: str, *, upstream: bool = False) -> dict[str, Any]:
    """The headers of a binary-mode record of `ce_type` (kafka_binding.binary_headers), with
    the optional W3C trace context of the CloudEvents distributed-tracing extension. An
    `upstream` event (what the ingest accepted) also keeps its producer's `dataschema`, its
    JSON `datacontenttype` and any other extension attributes, each a `ce_<name>` header."""
    content_type: dict[str, Any] = {"type": "string", "const": JSON_CONTENT_TYPE}
    properties: dict[str, Any] = {
        "ce_id": string_schema(
            "CloudEvents id: (ce_source, ce_id) identifies the event", minLength=1
        ),
        "ce_source": string_schema("CloudEvents source: the system that produced it", minLength=1),
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_subject": {"$ref": REF + "CustomerId"},
        "ce_time": string_schema("When it happened (RFC 3339)", format="date-time"),
        "ce_type": {"type": "string", "const": ce_type},
        "content-type": content_type,
        "ce_traceparent": string_schema(
            "Optional W3C traceparent (CloudEvents distributed-tracing extension)",
            pattern=_TRACEPARENT,
        ),
        "ce_tracestate": string_schema("Optional W3C tracestate of that trace"),
    }
    headers: dict[str, Any] = {
        "type": "object",
        "required": [
            "ce_id",
            "ce_source",
            "ce_specversion",
            "ce_subject",
            "ce_time",
            "ce_type",
            "content-type",
        ],
        "properties": properties,
    }
    if upstream:
        properties["content-type"] = string_schema(
            "The event's datacontenttype: a JSON media type (application/json, text/json or "
            "a +json type, parameters allowed)",
            examples=[JSON_CONTENT_TYPE, "application/json; charset=utf-8"],
        )
        properties["ce_dataschema"] = string_schema(
            "Optional dataschema the producer named (an absolute URI)", format="uri"
        )
        headers["patternProperties"] = {
            "^ce_" + NAME_PATTERN.removeprefix("^"): string_schema(
                "Any other CloudEvents extension attribute the producer sent, as its "
                "canonical string",
                maxLength=MAX_EXTENSION_VALUE,
            )
        }
        headers["maxProperties"] = len(properties) + MAX_EXTENSIONS
    return headers


def dlq_headers() -> dict[str, Any]:
    """The original record's headers (the `ce_*` ones when it had them) plus `dlq_*`."""
    properties: dict[str, Any] = {name: string_schema(why) for name, why in DLQ_HEADERS.items()}
    for name in ("dlq_source_partition", "dlq_source_offset"):
        properties[name]["pattern"] = r"^[0-9]+$"
    return {
        "type": "object",
        "required": list(DLQ_HEADERS),
        "properties": properties,
        "patternProperties": {
            r"^ce_": string_schema("The original record's CloudEvents headers, unchanged"),
        },
    }
