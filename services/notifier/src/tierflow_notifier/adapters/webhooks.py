"""HTTP requests for a delivery: a signed Standard Webhooks POST of the action (a CloudEvent in
structured content mode, `application/cloudevents+json`), or the completion event POSTed to the
ingest API (structured mode too)."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from tierflow_common.contract import CARE_ACTION_TYPE, CareActionData
from tierflow_notifier.adapters.http import Post
from tierflow_notifier.settings import WebhookEndpoint

SOURCE = "tierflow/notifier"
USER_AGENT = "tierflow-notifier/1"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
# The documented contract (docs/schemas/care-action.data.schema.json): webhook bodies and the
# care-actions topic carry the same fields.
ACTION_FIELDS = tuple(CareActionData.model_fields)
JSON_FIELDS = ("explanation", "details")
# The instants, written in UTC (the others are plain JSON values already).
TIME_FIELDS = tuple(
    name
    for name, info in CareActionData.model_fields.items()
    if info.annotation is datetime or datetime in typing.get_args(info.annotation)
)


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def action_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The action as receivers see it: everything needed to carry it out, nothing mutable.

    JSON columns read as text (a claimed delivery) are embedded as they are, for orjson."""
    out: dict[str, Any] = {k: row.get(k) for k in ACTION_FIELDS}
    for k in TIME_FIELDS:
        out[k] = _iso(out[k])
    for k in JSON_FIELDS:
        if isinstance(out[k], str):
            out[k] = orjson.Fragment(out[k])
    return out


def _json(value: Any) -> dict[str, Any]:
    """A JSON column as a dict, whether it was read decoded or as text."""
    if isinstance(value, str):
        decoded: dict[str, Any] = orjson.loads(value)
        return decoded
    return dict(value or {})


def action_cloudevent(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": row["action_id"],
        "source": SOURCE,
        "type": CARE_ACTION_TYPE,
        "subject": row["customer_id"],
        "time": _iso(row["created_at"]),
        "datacontenttype": "application/json",
        "data": action_payload(row),
    }


class WebhookRequests:
    """Builds signed requests: webhook-id is the action id, stable across retries, so a
    receiver that dedupes by it sees each action once."""

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        self.url = endpoint.url
        self._signer = Webhook(endpoint.secret.get_secret_value())

    def __call__(self, action: dict[str, Any], now: datetime) -> Post:
        body = orjson.dumps(action_cloudevent(action)).decode()
        msg_id = str(action["action_id"])
        return Post(
            headers={
                # Structured content mode (CloudEvents HTTP binding §3.2): the body is the
                # whole event, so receivers' CloudEvents SDKs read it as one.
                "content-type": STRUCTURED_CONTENT_TYPE,
                "user-agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(math.floor(now.timestamp())),
                "webhook-signature": self._signer.sign(msg_id, now, body),
            },
            body=body.encode(),
        )


def completion_event(action: dict[str, Any]) -> dict[str, Any] | None:
    """The interaction that tells the classifier a task was done (None if there is none).

    The event id derives from the action id, so a retried POST is a harmless duplicate.
    """
    details = _json(action.get("details"))
    outcome = str(action.get("outcome") or "")
    if action["kind"] in ("revisit", "follow_up"):
        data: dict[str, Any] = {"kind": "revisit_done"}
    elif action["kind"] == "escalation" and outcome == "resolved" and details.get("complaint_id"):
        data = {"kind": "complaint_resolved", "complaint_id": str(details["complaint_id"])}
    else:
        return None
    data["reference_id"] = str(action["action_id"])
    if outcome:
        data["note"] = f"care action {action['rule_id']}: {outcome}"[:2000]
    return {
        "specversion": "1.0",
        "id": f"care-action-{action['action_id']}-{data['kind']}",
        "source": SOURCE,
        "type": "interaction",
        "subject": action["customer_id"],
        "time": _iso(action.get("completed_at") or action["created_at"]),
        "data": data,
    }


class IngestRequests:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.url = base_url.rstrip("/") + "/v1/events"
        self._headers = {"content-type": STRUCTURED_CONTENT_TYPE, "user-agent": USER_AGENT}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def __call__(self, action: dict[str, Any], now: datetime) -> Post:
        event = completion_event(action)
        if event is None:  # nothing to report; the row exists only by a changed rule
            raise ValueError(f"action {action['action_id']} has no completion event")
        return Post(headers=self._headers, body=orjson.dumps(event))
