"""The W3C trace context across the three service processes, tracing off (the default): the
trace id of the POST's `traceparent` header is on the customer-events record, the classification
and tier changes, the care action, the webhook request's `traceparent` header and, once the task
is completed, on the completion event the notifier POSTs back through the ingest. Run again with
spans on (`OTEL_TRACES_EXPORTER=console`): each process's bootstrap turns tracing on from the
standard variable, and every service's spans are in that same trace."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.access import api_key_sync, bearer
from tests.integration.helpers import eventually
from tests.notifier_support import (
    ThreadedReceiver,
    WebhookReceiver,
    playbook_text,
    webhooks_env,
    write_playbook,
)
from tests.support import ROOT, Servers, ServiceProcess, isolated_topics, raw_records, unique
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.e2e

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
CUSTOMER = "traced-1"
RULE = """  - id: trace-follow-up
    when: {dimension: value_tier, from: "*", to: regular}
    action: {kind: follow_up, priority: 1, owner: "queue:care", due_in: 2d}
"""


CONSOLE = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
# A span as the SDK's console exporter prints it: its name, then its context.
SPAN = re.compile(
    r'"name": "(?P<name>[^"]+)",\s*"context": \{\s*"trace_id": "0x(?P<trace>[0-9a-f]{32})"'
)


@dataclass
class Live:
    ingest: ServiceProcess
    classifier: ServiceProcess
    notifier: ServiceProcess
    receiver: WebhookReceiver
    kafka: KafkaSettings
    topics: TopicSettings
    key: str


@pytest.fixture
def live(
    request: pytest.FixtureRequest, servers: Servers, log_dir: Path, tmp_path: Path
) -> Iterator[Live]:
    otel: dict[str, str] = getattr(request, "param", {})
    database = DatabaseSettings(database_url=servers.create_database(unique("e2e_trace")))
    upgrade_head(database)
    key = api_key_sync(database, name="e2e")
    kafka = KafkaSettings(bootstrap_servers=servers.bootstrap_servers)
    topics = isolated_topics(partitions=3)
    asyncio.run(ensure_topics(kafka, topics))
    env = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "CLASSIFIER_RULES_FILE": str(ROOT / "config" / "classifier.yaml"),
        "CLASSIFIER_GROUP_ID": unique("classifier"),
        "NOTIFIER_GROUP_ID": unique("notifier"),
        "NOTIFIER_EVENTS_GROUP_ID": unique("notifier_events"),
        "NOTIFIER_PLAYBOOKS_FILE": str(
            write_playbook(tmp_path / "care.yaml", playbook_text() + RULE)
        ),
        **topics.as_env(),
        **otel,
    }
    with ThreadedReceiver(WebhookReceiver()) as receiver:
        ingest = ServiceProcess("ingest", env, log_dir)
        notifier_env = {
            **env,
            "NOTIFIER_WEBHOOKS": webhooks_env(receiver.endpoint("crm")),
            "NOTIFIER_INGEST_URL": ingest.url,
            "NOTIFIER_INGEST_API_KEY": key,
        }
        services = [
            ingest,
            ServiceProcess("classifier", env, log_dir),
            ServiceProcess("notifier", notifier_env, log_dir),
        ]
        try:
            for svc in services:
                svc.start(wait_ready=False)
            for svc in services:
                svc.wait_ready()
            yield Live(ingest, services[1], services[2], receiver, kafka, topics, key)
        finally:
            for svc in services:
                svc.stop()


def _trace_id(traceparent: bytes | str | None) -> str | None:
    if traceparent is None:
        return None
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return text.split("-")[1]


def _headers(record: Any) -> dict[str, bytes]:
    return {k: bytes(v) for k, v in record.headers}


@pytest.mark.parametrize("live", [{}, CONSOLE], ids=["tracing-off", "spans-on"], indirect=True)
async def test_the_post_trace_id_is_on_every_record_and_request_it_causes(live: Live) -> None:
    purchase = {
        "specversion": "1.0",
        "id": f"{CUSTOMER}-o1",
        "source": "shop",
        "type": "purchase",
        "subject": CUSTOMER,
        "time": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "data": {"order_id": f"{CUSTOMER}-o1", "amount": "20.00", "currency": "USD"},
    }
    async with httpx.AsyncClient(timeout=10, headers=bearer(live.key)) as http:
        resp = await http.post(
            f"{live.ingest.url}/v1/events",
            json=purchase,
            headers={"content-type": "application/cloudevents+json", "traceparent": TRACEPARENT},
        )
        assert resp.status_code == 202, resp.text

        async def webhook() -> list[Any]:
            return [
                got[0]
                for got in list(live.receiver.accepted.values())
                if got[0].body["data"]["rule_id"] == "trace-follow-up"
            ]

        (received,) = await eventually(webhook, bool, timeout=60, what="the webhook")
        assert _trace_id(received.headers.get("traceparent")) == TRACE

        # The task is done: the completion event goes back through the ingest, traced.
        action_id = received.body["data"]["action_id"]
        done = await http.post(
            f"{live.notifier.url}/v1/actions/{action_id}/complete", json={"outcome": "done"}
        )
        assert done.status_code == 200, done.text
        assert done.json()["reported"] is True

    async def customer_events() -> list[Any]:
        records = await raw_records(live.kafka, live.topics.customer_events)
        return [r for r in records if r.key == CUSTOMER.encode()]

    events = await eventually(
        customer_events, lambda rs: len(rs) == 2, timeout=60, what="the completion event"
    )
    types = {_headers(r)["ce_type"]: _trace_id(_headers(r).get("ce_traceparent")) for r in events}
    assert types == {b"purchase": TRACE, b"interaction": TRACE}

    for topic in (live.topics.classification_changed, live.topics.tier_changed):
        records = [r for r in await raw_records(live.kafka, topic) if r.key == CUSTOMER.encode()]
        assert records, topic
        assert {_trace_id(_headers(r).get("ce_traceparent")) for r in records} == {TRACE}, topic
    actions = [
        r
        for r in await raw_records(live.kafka, live.topics.care_actions)
        if r.key == CUSTOMER.encode() and b'"trace-follow-up"' in r.value
    ]
    assert [_trace_id(_headers(r).get("ce_traceparent")) for r in actions] == [TRACE]
    if live.ingest.env.get("OTEL_TRACES_EXPORTER") != "console":
        return

    async def spans() -> dict[str, set[str]]:
        names: dict[str, set[str]] = {}
        for svc in (live.ingest, live.classifier, live.notifier):
            text = svc.log_file.read_text(errors="replace")
            for m in SPAN.finditer(text):
                if m["trace"] == TRACE:
                    names.setdefault(svc.name, set()).add(m["name"])
        return names

    wanted = {
        "ingest": {"POST /v1/events"},
        "classifier": {"classify customer"},
        "notifier": {"notifier action", "webhook delivery"},
    }
    await eventually(
        spans,
        lambda got: all(names <= got.get(svc, set()) for svc, names in wanted.items()),
        timeout=30,
        what="every service's spans in the POST's trace",
    )
