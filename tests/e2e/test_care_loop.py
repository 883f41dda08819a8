"""The care loop end to end (ingest, classifier and notifier as processes, events POSTed to the
ingest, a signature-verifying webhook receiver):

- completing an at-risk customer's revisit reports revisit_done; the classifier makes it the
  customer's last contact, its care_contact becomes contacted_recently and the revisit cadence
  stops (another at-risk customer's goes on);
- a satisfaction survey follows the completed revisit and a resolved complaint; the revisit's
  survey meets the one-message-a-day cap and is deferred a day (service: on_cap defer), not lost;
- a holiday greeting goes out at the calendar day's local time in the customer's time zone; a
  customer already messaged today has it dropped (marketing: on_cap drop), kept as suppressed;
- the notifier's /metrics counts each deferral and drop by rule and outcome.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.access import api_key_sync
from tests.e2e.test_notifier_pipeline import _event, _purchase
from tests.integration.helpers import eventually
from tests.notifier_support import ThreadedReceiver, WebhookReceiver, webhooks_env, write_playbook
from tests.support import ROOT, Servers, ServiceProcess, isolated_topics, unique
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.settings import DatabaseSettings, KafkaSettings

pytestmark = pytest.mark.e2e

ZONE = "Asia/Shanghai"
CAP = "one-message-a-day"
PLAYBOOK = """playbook_version: "care-loop-e2e"
contact_policy:
  default_timezone: UTC
  caps:
    - {{id: {cap}, kinds: [care_message], classes: [service, marketing], max: 1, per: 1d}}
holidays:
  - {{name: test-day, date: "{day}"}}
rules:
  - id: at-risk-personal-revisit
    when: {{dimension: care_contact, from: "*", to: revisit_due}}
    action: {{kind: revisit, priority: 1, owner: "queue:care", due_in: 3d}}
  - id: at-risk-revisit-cadence
    when: {{cadence: {{dimension: care_contact, label: revisit_due, every: 2s}}}}
    action: {{kind: revisit, priority: 2, owner: "queue:care", due_in: 3d}}
  - id: welcome
    when: {{dimension: value_tier, from: "*", to: regular}}
    action: {{kind: care_message, priority: 4, template: welcome}}
  - id: survey
    when: {{care_completed: {{after: 1s, of: [complaint_resolved, revisit_done]}}}}
    action: {{kind: care_message, priority: 3, class: service, template: satisfaction-survey}}
  - id: holiday-greeting
    when: {{holiday: {{at: "{at}"}}}}
    action: {{kind: care_message, priority: 5, template: holiday-greeting}}
"""


@dataclass
class Loop:
    ingest: ServiceProcess
    classifier: ServiceProcess
    notifier: ServiceProcess
    receiver: WebhookReceiver
    key: str
    holiday: datetime  # when the holiday greeting is due (UTC)


@pytest.fixture
def loop(servers: Servers, log_dir: Path, tmp_path: Path) -> Iterator[Loop]:
    database = DatabaseSettings(database_url=servers.create_database(unique("e2e_loop")))
    upgrade_head(database)
    key = api_key_sync(database, name="e2e")
    topics = isolated_topics(partitions=3)
    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=servers.bootstrap_servers), topics))
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
    # The holiday is today, in the customer's zone, at a time a little after start-up.
    holiday = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=45)
    local = holiday.astimezone(ZoneInfo(ZONE))
    playbook = write_playbook(
        tmp_path / "loop.yaml",
        PLAYBOOK.format(cap=CAP, day=local.strftime("%m-%d"), at=local.strftime("%H:%M:%S")),
    )
    with ThreadedReceiver(WebhookReceiver()) as receiver:
        ingest = ServiceProcess("ingest", env, log_dir)
        classifier = ServiceProcess("classifier", env, log_dir)
        notifier_env = {
            **env,
            "NOTIFIER_PLAYBOOKS_FILE": str(playbook),
            "NOTIFIER_WEBHOOKS": webhooks_env(receiver.endpoint("crm")),
            "NOTIFIER_INGEST_URL": ingest.url,
            "NOTIFIER_INGEST_API_KEY": key,
        }
        notifier = ServiceProcess("notifier", notifier_env, log_dir)
        started: list[ServiceProcess] = []
        try:
            for svc in (ingest, classifier, notifier):
                svc.start(wait_ready=False)
                started.append(svc)
            for svc in started:
                svc.wait_ready()
            yield Loop(ingest, classifier, notifier, receiver, key, holiday)
        finally:
            for svc in started:
                svc.stop()


def _rules(items: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [a for a in items if a["rule_id"] == rule]


def _policy_counts(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["rule"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "tierflow_notifier_contact_policy"
        for s in family.samples
        if s.name.endswith("_total")
    }


async def test_the_care_loop_resets_defers_drops_and_greets(loop: Loop) -> None:
    now = datetime.now(UTC)
    t = unique("loop")
    done, probe, greeted, capped, complained = (
        f"{t}-{n}" for n in ("done", "probe", "greeted", "capped", "complained")
    )
    events = [
        # One order 200 days ago: at risk (2 x the default 90-day rhythm), revisit due.
        _purchase(f"{done}-o1", done, "80.00", now - timedelta(days=200)),
        _purchase(f"{probe}-o1", probe, "80.00", now - timedelta(days=200)),
        # A profile in Shanghai: the holiday greeting at its local time there.
        _event(f"{greeted}-p", greeted, "profile", {"timezone": ZONE}, now),
        # The same, but messaged today already (the welcome of a first purchase).
        _purchase(f"{capped}-o1", capped, "20.00", now - timedelta(hours=1)),
        _event(f"{capped}-p", capped, "profile", {"timezone": ZONE}, now),
        # A complaint raised and resolved: a survey follows the resolution.
        _event(
            f"{complained}-c",
            complained,
            "interaction",
            {"kind": "complaint", "complaint_id": "K-1"},
            now - timedelta(hours=2),
        ),
        _event(
            f"{complained}-r",
            complained,
            "interaction",
            {"kind": "complaint_resolved", "complaint_id": "K-1"},
            now - timedelta(hours=1),
        ),
    ]
    headers = {"authorization": f"Bearer {loop.key}"}
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        resp = await http.post(
            f"{loop.ingest.url}/v1/events:batch",
            json=events,
            headers={**headers, "content-type": "application/cloudevents-batch+json"},
        )
        assert resp.status_code == 200, resp.text[:500]

        async def actions(customer: str) -> list[dict[str, Any]]:
            resp = await http.get(
                f"{loop.notifier.url}/v1/actions",
                params={"customer": customer, "sort": "id", "limit": 1000},
            )
            items: list[dict[str, Any]] = resp.json()["items"]
            return items

        async def care_contact(customer: str) -> str | None:
            resp = await http.get(f"{loop.classifier.url}/v1/customers/{customer}")
            label: str | None = resp.json()["dimensions"]["care_contact"]["label"]
            return label

        def revisits(items: list[dict[str, Any]]) -> int:
            return sum(a["kind"] == "revisit" for a in items)

        # At risk: a personal revisit and then one every 2 s while revisit_due holds.
        before = await eventually(
            functools.partial(actions, done),
            lambda items: revisits(items) >= 2 and bool(_rules(items, "welcome")),
            timeout=45,
            what="the at-risk revisits and the welcome",
        )
        assert await care_contact(done) == "revisit_due"
        first = _rules(before, "at-risk-personal-revisit")[0]
        completed = await http.post(
            f"{loop.notifier.url}/v1/actions/{first['action_id']}/complete",
            json={"outcome": "done"},
        )
        assert completed.status_code == 200, completed.text
        assert completed.json()["reported"] is True

        # The classifier read the reported revisit: contacted recently, no revisit due.
        await eventually(
            functools.partial(care_contact, done),
            lambda label: label == "contacted_recently",
            timeout=30,
            what="care_contact reset by the completed revisit",
        )

        # The cadence stops for it: while the probe's goes on (4 more revisits = 8 s), the
        # contacted customer's count stays where it was.
        async def probe_revisits() -> int:
            return revisits(await actions(probe))

        mark = await probe_revisits()
        await eventually(probe_revisits, lambda n: n >= mark + 2, timeout=30, what="probe +2")
        settled = revisits(await actions(done))
        mark = await probe_revisits()
        await eventually(probe_revisits, lambda n: n >= mark + 2, timeout=30, what="probe +2")
        assert revisits(await actions(done)) == settled, "the cadence ended with the contact"

        # The survey after the revisit: capped by today's welcome, so deferred a day, not lost.
        after = await eventually(
            functools.partial(actions, done),
            lambda items: bool(_rules(items, "survey")),
            timeout=30,
            what="the survey after the completed revisit",
        )
        (survey,) = _rules(after, "survey")
        (welcome,) = _rules(after, "welcome")
        assert survey["status"] == "open"
        assert survey["details"]["completed_action_id"] == first["action_id"]
        assert survey["explanation"]["deferred"]["by"] == f"cap:{CAP}"
        welcome_at = datetime.fromisoformat(welcome["deliver_at"])
        assert datetime.fromisoformat(survey["deliver_at"]) == welcome_at + timedelta(days=1)
        # The survey after the resolved complaint: nothing in its way, sent now.
        (resolved,) = await eventually(
            functools.partial(actions, complained),
            lambda items: bool(_rules(items, "survey")),
            timeout=30,
            what="the survey after the resolved complaint",
        )
        assert resolved["details"]["complaint_id"] == "K-1"
        assert "deferred" not in resolved["explanation"]

        # The holiday greeting, at the local time in Shanghai; dropped where capped.
        left = (loop.holiday - datetime.now(UTC)).total_seconds()
        assert left > -30, "the holiday passed before the profiles were read"
        greetings = await eventually(
            functools.partial(actions, greeted),
            lambda items: bool(_rules(items, "holiday-greeting")),
            timeout=max(left, 0) + 30,
            what="the holiday greeting",
        )
        (greeting,) = greetings
        # Due at 'at' on the day in Shanghai; sent then (the scheduler wakes within 0.2 s).
        assert datetime.fromisoformat(greeting["explanation"]["scheduled_for"]) == loop.holiday
        sent_at = datetime.fromisoformat(greeting["deliver_at"])
        assert loop.holiday <= sent_at < loop.holiday + timedelta(seconds=10)
        assert greeting["details"]["holiday"] == "test-day"
        assert greeting["status"] == "open"
        (dropped,) = _rules(
            await eventually(
                functools.partial(actions, capped),
                lambda items: bool(_rules(items, "holiday-greeting")),
                timeout=30,
                what="the capped customer's holiday greeting",
            ),
            "holiday-greeting",
        )
        assert dropped["status"] == "suppressed"
        assert dropped["suppressed_reason"] == f"cap:{CAP}"

        # Delivered: the welcome, the complaint survey and the greeting; the deferred survey
        # and the dropped greeting not.
        sent = {welcome["action_id"], resolved["action_id"], greeting["action_id"]}

        async def received() -> set[str]:
            return loop.receiver.ids()

        got = await eventually(received, lambda ids: ids >= sent, timeout=30, what="deliveries")
        assert survey["action_id"] not in got
        assert dropped["action_id"] not in got

        async def counts() -> dict[tuple[str, str], float]:
            return _policy_counts((await http.get(f"{loop.notifier.url}/metrics")).text)

        metric = await eventually(
            counts,
            lambda c: (
                c.get(("survey", "deferred_cap"), 0) >= 1
                and c.get(("holiday-greeting", "dropped_cap"), 0) >= 1
            ),
            timeout=15,
            what="the contact-policy counter",
        )
        assert metric[("survey", "deferred_cap")] == 1
        assert metric[("holiday-greeting", "dropped_cap")] == 1
