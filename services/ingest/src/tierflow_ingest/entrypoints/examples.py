"""OpenAPI request examples: one per event type, taken from the contract's own examples."""

from __future__ import annotations

from typing import Any

from tierflow_common.contract.events import EVENT_MODELS


def event_examples() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, model in EVENT_MODELS.items():
        extra = model.model_config.get("json_schema_extra")
        if isinstance(extra, dict):
            examples = extra.get("examples")
            if isinstance(examples, list) and examples:
                out[name] = {"summary": f"a {name} event", "value": examples[0]}
    return out


def batch_example() -> list[Any]:
    return [e["value"] for e in event_examples().values()]


def ndjson_example() -> str:
    import orjson  # noqa: PLC0415

    return "\n".join(orjson.dumps(v).decode() for v in batch_example()) + "\n"
