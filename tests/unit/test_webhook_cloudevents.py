"""A webhook request is a CloudEvent in structured content mode as CloudEvents SDKs we did not
write read it — the Python SDK's 1.x HTTP binding and the JavaScript SDK's `HTTP.toEvent` —
and its Standard Webhooks signature still verifies; the completion event the notifier POSTs to
the ingest is structured mode too."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from cloudevents.v1.http import from_http
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from tests.cloudevents_js import Message, decode, install
from tests.unit.test_care_action_contract import _rows
from tierflow_common.contract import CARE_ACTION_TYPE, CareActionData
from tierflow_notifier.adapters.webhooks import IngestRequests, WebhookRequests
from tierflow_notifier.settings import WebhookEndpoint

NOW = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.fixture(scope="module")
def js() -> Any:
    node, script = install()
    return lambda messages: decode(node, script, messages)


def webhook_request() -> tuple[dict[str, Any], dict[str, str], bytes]:
    row = next(r for r in _rows("lifecycle", "active", "at_risk") if r["kind"] == "coupon")
    endpoint = WebhookEndpoint(
        name="crm", url="https://crm.example.com/hooks", secret=SecretStr(SECRET)
    )
    post = WebhookRequests(endpoint)(row, datetime.now(UTC))  # signed now: verify's window
    return row, dict(post.headers), post.body  # fmt: skip


def test_the_python_sdk_reads_a_webhook_as_one_structured_event() -> None:
    row, headers, body = webhook_request()
    assert headers["content-type"] == "application/cloudevents+json"
    event = from_http(headers, body)
    assert (event["id"], event["source"], event["type"]) == (
        row["action_id"],
        "tierflow/notifier",
        CARE_ACTION_TYPE,
    )
    assert event["subject"] == row["customer_id"]
    assert event["datacontenttype"] == "application/json"
    assert CareActionData.model_validate(event.data).action_id == row["action_id"]
    # The signature covers the body as sent, under the same webhook-id.
    assert Webhook(SECRET).verify(body, headers) == orjson.loads(body)
    assert headers["webhook-id"] == row["action_id"]


def test_the_javascript_sdk_reads_a_webhook_and_refused_the_former_content_type(js: Any) -> None:
    row, headers, body = webhook_request()
    now, before = js(
        [
            Message("http", headers, body.decode()),
            Message("http", {**headers, "content-type": "application/json"}, body.decode()),
        ]
    )
    assert now.ok, now.error
    assert (now.event["id"], now.event["type"]) == (row["action_id"], CARE_ACTION_TYPE)
    assert now.event["data"]["action_id"] == row["action_id"]
    # What the issue saw: as `application/json` the SDK finds no CloudEvent in the request.
    assert not before.ok


def test_completion_events_to_the_ingest_are_structured_events(js: Any) -> None:
    action = {
        "action_id": "a-1",
        "kind": "follow_up",
        "rule_id": "r",
        "customer_id": "c-1",
        "created_at": NOW,
        "outcome": "done",
    }
    post = IngestRequests("http://ingest", "tf_key")(action, NOW)
    headers = dict(post.headers)
    event = from_http(headers, post.body)
    assert (event["type"], event["subject"]) == ("interaction", "c-1")
    (decoded,) = js([Message("http", headers, post.body.decode())])
    assert decoded.ok, decoded.error
    assert decoded.event["id"] == event["id"]
