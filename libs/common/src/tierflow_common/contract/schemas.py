"""JSON Schema export of the contract (published under docs/schemas, served by the APIs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tierflow_common.contract.customer_events import OverrideData
from tierflow_common.contract.events import (
    CareActionData,
    ClassificationChangedData,
    ClassificationsChangedData,
    CustomerErasedData,
    customer_event_json_schema,
)


def contract_schemas() -> dict[str, dict[str, Any]]:
    return {
        "customer-event.schema.json": customer_event_json_schema(),
        "classification-changed.data.schema.json": ClassificationChangedData.model_json_schema(
            by_alias=True
        ),
        "classification-changed.v2.data.schema.json": (
            ClassificationsChangedData.model_json_schema(by_alias=True)
        ),
        "care-action.data.schema.json": CareActionData.model_json_schema(),
        "customer-erased.data.schema.json": CustomerErasedData.model_json_schema(),
        "classification-override.data.schema.json": OverrideData.model_json_schema(),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in contract_schemas().items():
        path = out / name
        path.write_text(render(schema))
        written.append(path)
    return written
