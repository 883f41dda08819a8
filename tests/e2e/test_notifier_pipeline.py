"""From the ingest API to a signature-verifying webhook receiver, through the real classifier
and notifier processes: every trigger kind and every action type of a playbook fires, each
action reaches the receiver once per webhook-id, and completing an escalation reports the
resolution back through the ingest API so the classifier clears the problem-customer state.

Events are POSTed to the ingest (as an upstream shop or CRM would); nothing is injected on a
topic. Schedules use test-sized durations (follow-up 1 s after the first purchase, VIP revisit
every 2 s, complaint SLA 1 s → supervisor and 4 s → manager, birthday care a few seconds from
now); the classifier judges on the wall clock, so "200 days without a purchase" and "a complaint
open for 4 days" are events dated in the past.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.access import api_key_sync
from tests.integration.helpers import eventually
from tests.notifier_support import (
    ThreadedReceiver,
    WebhookReceiver,
    playbook_text,
    webhooks_env,
    write_playbook,
)
from tests.published_events import (
    Published,
    from_kafka,
    from_webhooks,
    shared_identities,
)
from tests.support import ROOT, Servers, ServiceProcess, isolated_topics, raw_records, unique
from tierflow_common.contract import (
    CARE_ACTION_TYPE,
    CLASSIFICATIONS_CHANGED_TYPE,
    CUSTOMER_ERASED_TYPE,
    TIER_CHANGED_TYPE,
)
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.e2e

HISTORY = 60  # the churn model is fitted on at least 50 customers' purchase history
ACTION_KINDS = {
    "account_manager_assignment",
    "revisit",
    "follow_up",
    "coupon",
    "care_message",
    "escalation",
}


@dataclass
class Live:
    ingest: ServiceProcess
    classifier: ServiceProcess
    notifier: ServiceProcess
    receiver: WebhookReceiver
    key: str
    birthday: datetime  # when the birthday care is due today (UTC)
    kafka: KafkaSettings
    topics: TopicSettings


@pytest.fixture
def live(servers: Servers, log_dir: Path, tmp_path: Path) -> Iterator[Live]:
    database = DatabaseSettings(database_url=servers.create_database(unique("e2e_care")))
    upgrade_head(database)
    key = api_key_sync(database, name="e2e")
    topics = isolated_topics(partitions=3)
    kafka = KafkaSettings(bootstrap_servers=servers.bootstrap_servers)
    asyncio.run(ensure_topics(kafka, topics))
    env = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "CLASSIFIER_RULES_FILE": str(ROOT / "config" / "classifier.yaml"),
        "CLASSIFIER_GROUP_ID": unique("classifier"),
        "NOTIFIER_GROUP_ID": unique("notifier"),
        "NOTIFIER_EVENTS_GROUP_ID": unique("notifier_events"),
        "NOTIFIER_DELIVERY_POLL_S": "0.1",
        "NOTIFIER_SCHEDULER_MAX_SLEEP_S": "0.2",
        **topics.as_env(),
    }
    with ThreadedReceiver(WebhookReceiver()) as receiver:
        ingest = ServiceProcess("ingest", env, log_dir)
        classifier = ServiceProcess("classifier", env, log_dir)
        started: list[ServiceProcess] = []
        try:
            for svc in (ingest, classifier):
                svc.start(wait_ready=False)
                started.append(svc)
            # The birthday rule fires at a time of day a little after the notifier is up.
            # (Start-up on two shared cores can take 15 s; the test checks the margin left.)
            birthday = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=35)
            playbook = write_playbook(
                tmp_path / "care.yaml",
                playbook_text(birthday_at=birthday.strftime("%H:%M:%S"), churn_to="*"),
            )
            notifier = ServiceProcess(
                "notifier",
                {
                    **env,
                    "NOTIFIER_PLAYBOOKS_FILE": str(playbook),
                    "NOTIFIER_WEBHOOKS": webhooks_env(receiver.endpoint("crm")),
                    "NOTIFIER_INGEST_URL": ingest.url,
                    "NOTIFIER_INGEST_API_KEY": key,
                },
                log_dir,
            )
            notifier.start(wait_ready=False)
            started.append(notifier)
            for svc in started:
                svc.wait_ready()
            yield Live(ingest, classifier, notifier, receiver, key, birthday, kafka, topics)
        finally:
            for svc in started:
                svc.stop()


def _event(
    event_id: str, customer: str, type_: str, data: dict[str, Any], at: datetime
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "shop" if type_ == "purchase" else "crm",
        "type": type_,
        "subject": customer,
        "time": at.isoformat(),
        "data": data,
    }


def _purchase(event_id: str, customer: str, amount: str, at: datetime) -> dict[str, Any]:
    return _event(
        event_id,
        customer,
        "purchase",
        {"order_id": event_id, "amount": amount, "currency": "USD"},
        at,
    )


def _has_rules(want: set[str], items: list[dict[str, Any]]) -> bool:
    return {a["rule_id"] for a in items} >= want


async def test_every_trigger_and_action_from_ingest_to_signed_webhooks(live: Live) -> None:
    now = datetime.now(UTC)
    t = unique("c")
    vip, lapsed, bday, late, esc = (f"{t}-{n}" for n in ("vip", "lapsed", "bday", "late", "esc"))
    birthday = live.birthday.date().replace(year=1990).isoformat()
    events = [
        # Three large orders in the window: value tier VIP (account manager, revisits).
        # (The third is sent in CloudEvents HTTP binary mode, with extensions, below.)
        *[_purchase(f"{vip}-o{k}", vip, "2000.00", now - timedelta(hours=3 - k)) for k in range(2)],
        # One order 200 days ago: lifecycle at_risk (default rhythm 90 days x 2).
        _purchase(f"{lapsed}-o1", lapsed, "80.00", now - timedelta(days=200)),
        _event(f"{bday}-p", bday, "profile", {"birthday": birthday, "timezone": "UTC"}, now),
        # A complaint raised now: the SLA escalates after 1 s (supervisor) and 4 s (manager).
        _event(f"{late}-c", late, "interaction", {"kind": "complaint", "complaint_id": "L-1"}, now),
        # A complaint open for 4 days: the classifier calls the customer escalated (> 3 days).
        _event(
            f"{esc}-c",
            esc,
            "interaction",
            {"kind": "complaint", "complaint_id": "E-1"},
            now - timedelta(days=4),
        ),
    ]
    # Purchase history the churn model is fitted on: steady, lapsed and one-time buyers.
    for c in range(HISTORY):
        gap, count = 7 + (c % 5) * 20, 1 + c % 6
        last = now - timedelta(days=(c % 4) * 60 + 1)
        events += [
            _purchase(f"{t}-h{c}-{k}", f"{t}-h{c}", "25.00", last - timedelta(days=gap * k))
            for k in range(count)
        ]
    headers = {"authorization": f"Bearer {live.key}"}
    left = (live.birthday - datetime.now(UTC)).total_seconds()
    assert left > 5, f"services took too long to start: birthday care due in {left:.1f}s"
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        for i in range(0, len(events), 500):
            resp = await http.post(
                f"{live.ingest.url}/v1/events:batch",
                json=events[i : i + 500],
                headers={**headers, "content-type": "application/cloudevents-batch+json"},
            )
            assert resp.status_code == 200, resp.text[:500]
            assert resp.json()["accepted"] == len(events[i : i + 500])
        # Binary content mode, as SDK emitters send by default: attributes in ce-* headers
        # (extensions too), the data as the body. VIP needs this third order applied.
        third = _purchase(f"{vip}-o2", vip, "2000.00", now - timedelta(hours=1))
        resp = await http.post(
            f"{live.ingest.url}/v1/events",
            content=json.dumps(third.pop("data")),
            headers={
                **headers,
                **{f"ce-{k}": str(v) for k, v in third.items()},
                "ce-traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "ce-comexampleextension1": "value",
                "content-type": "application/json",
            },
        )
        assert resp.status_code == 202, resp.text

        async def fit() -> httpx.Response:
            # A fit runs in a child process (time split, folds, calibration): seconds, not ms.
            return await http.post(f"{live.classifier.url}/v1/models/churn:fit", timeout=120)

        await eventually(
            fit, lambda r: r.status_code == 200, timeout=30.0, what="churn model fitted"
        )

        async def actions(customer: str) -> list[dict[str, Any]]:
            resp = await http.get(
                f"{live.notifier.url}/v1/actions", params={"customer": customer, "limit": 1000}
            )
            items: list[dict[str, Any]] = resp.json()["items"]
            return items

        expected = {
            vip: {"vip-account-manager", "vip-cadence-revisit", "first-purchase-follow-up"},
            lapsed: {"at-risk-coupon", "first-purchase-follow-up"},
            f"{t}-h0": {"churn-care-message", "first-purchase-follow-up"},
            bday: {"birthday-care"},
            late: {"complaint-supervisor", "complaint-manager"},
            esc: {"problem-escalation", "complaint-supervisor", "complaint-manager"},
        }
        got: dict[str, list[dict[str, Any]]] = {}
        for customer, want in expected.items():
            got[customer] = await eventually(
                functools.partial(actions, customer),
                functools.partial(_has_rules, want),
                timeout=45,
                what=f"actions of {customer}",
            )
        every = [a for items in got.values() for a in items]
        assert {a["kind"] for a in every} >= ACTION_KINDS
        assert {a["explanation"]["trigger"] for a in every} >= {
            "classification_change",
            "cadence",
            "first_purchase",
            "birthday",
            "complaint_sla",
        }
        changes = {
            (a["explanation"].get("dimension"), a["rule_id"])
            for a in every
            if a["explanation"]["trigger"] == "classification_change"
        }
        assert changes >= {
            ("value_tier", "vip-account-manager"),
            ("lifecycle", "at-risk-coupon"),
            ("churn_risk", "churn-care-message"),
            ("problem", "problem-escalation"),
        }
        by_rule = {a["rule_id"]: a for a in got[late]}
        due = {
            r: datetime.fromisoformat(by_rule[r]["explanation"]["scheduled_for"])
            for r in ("complaint-supervisor", "complaint-manager")
        }
        assert due["complaint-manager"] - due["complaint-supervisor"] == timedelta(seconds=3)
        assert by_rule["complaint-manager"]["owner"] == "role:manager"
        coupon = next(a for a in got[lapsed] if a["kind"] == "coupon")
        assert coupon["details"]["coupon"]["value"] == "10.00"
        assert coupon["reason"].startswith("lifecycle: (none) → at_risk")

        # Every action reached the receiver, signed, once per webhook-id.
        ids = {a["action_id"] for a in every if a["status"] != "suppressed"}

        async def received() -> set[str]:
            return live.receiver.ids()

        await eventually(received, lambda r: r >= ids, timeout=30.0, what="every action delivered")
        body = live.receiver.accepted[coupon["action_id"]][0].body
        assert body["type"] == "tierflow.care_action.created"
        assert body["data"]["details"]["coupon"]["currency"] == "USD"
        assert body["data"]["due_at"] == coupon["due_at"]

        # Closing the loop: the supervisor resolves the escalated complaint; the notifier
        # reports complaint_resolved through the ingest API and the classifier clears it.
        escalation = next(a for a in got[esc] if a["rule_id"] == "complaint-supervisor")

        async def problem() -> str | None:
            resp = await http.get(f"{live.classifier.url}/v1/customers/{esc}")
            label: str | None = resp.json()["dimensions"]["problem"]["label"]
            return label

        # Before the task is completed (afterwards the pipeline may clear it at any moment).
        assert await problem() == "escalated"
        done = await http.post(
            f"{live.notifier.url}/v1/actions/{escalation['action_id']}/complete",
            json={"outcome": "resolved"},
        )
        assert done.status_code == 200, done.text
        assert done.json()["reported"] is True

        await eventually(
            problem, lambda label: label == "resolved", timeout=30.0, what="problem state cleared"
        )

        # An erasure: its tierflow.customer.erased record is on the classification topic too.
        erased = await http.delete(f"{live.classifier.url}/v1/customers/{t}-h1")
        assert erased.status_code == 202, erased.text

        async def published() -> list[Published]:
            return await every_published(live)

        everything = await eventually(
            published,
            lambda events: CUSTOMER_ERASED_TYPE in {e.type for e in events},
            timeout=30.0,
            what="every output topic read back",
        )
    # Every record of every output topic, and every webhook body, decodes with the CloudEvents
    # SDKs; no source + id is shared by two different events (a webhook and its care-actions
    # record are one event).
    assert {e.type for e in everything} >= {
        CLASSIFICATIONS_CHANGED_TYPE,
        TIER_CHANGED_TYPE,
        CUSTOMER_ERASED_TYPE,
        CARE_ACTION_TYPE,
        "interaction",  # the completion the notifier reported through the ingest
    }
    assert {e.where for e in everything} >= {"webhook", live.topics.care_actions}
    assert shared_identities(everything) == []

    assert live.receiver.bad_signatures == 0
    assert live.receiver.duplicates() == 0


async def every_published(live: Live) -> list[Published]:
    """What the pipeline published, read with the SDKs: the classifier's and notifier's
    topics, the notifier's completion events on customer-events, the webhook requests."""
    topics = live.topics
    out: list[Published] = []
    for topic in (topics.classification_changed, topics.tier_changed, topics.care_actions):
        out += from_kafka(topic, await raw_records(live.kafka, topic))
    notifier_events = [
        r
        for r in await raw_records(live.kafka, topics.customer_events)
        if (b"ce_source", b"tierflow/notifier") in [(k.encode(), bytes(v)) for k, v in r.headers]
    ]
    out += from_kafka(topics.customer_events, notifier_events)
    requests = [
        (received.headers, received.raw)
        for deliveries in list(live.receiver.accepted.values())
        for received in deliveries
    ]
    return out + from_webhooks(requests)
