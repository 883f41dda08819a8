"""The care-action queue on the real broker and PostgreSQL: actions carry the scores of the
classification change that caused them (records as the classifier builds them, scores as the
classifier computes them), `GET /v1/actions` pages them in queue order, late work is flagged,
and operators reassign and cancel (a cancelled action is never delivered)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.access import api_key, bearer
from tests.integration.helpers import eventually
from tests.notifier_support import Harness, WebhookReceiver, start_harness, write_playbook
from tests.support import unique
from tests.unit.test_churn_model import model_for
from tierflow_classifier.domain.change_ids import change_id
from tierflow_classifier.domain.change_scores import Scored, change_scores
from tierflow_classifier.domain.churn.bgnbd import BgNbdParams
from tierflow_classifier.domain.churn_features import churn_config
from tierflow_classifier.domain.model import Assignment, Change, CustomerState
from tierflow_classifier.service_layer.reclassify import change_records
from tierflow_common.auth import Role
from tierflow_common.contract import EmittedEvent
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_notifier.domain.queue import queue_key

pytestmark = pytest.mark.integration

PLAYBOOK = """playbook_version: "queue-test"
contact_policy:
  default_timezone: UTC
rules:
  - id: vip-account-manager
    when: {dimension: value_tier, from: "*", to: VIP}
    action: {kind: account_manager_assignment, priority: 1, owner: "queue:am", due_in: 2d}
  - id: problem-escalation
    when: {dimension: problem, from: "*", to: escalated}
    action: {kind: escalation, priority: 0, owner: "role:supervisor", due_in: 1s}
"""
NOW = datetime.now(UTC)
MODEL = model_for(BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426))


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
async def receiver() -> WebhookReceiver:
    return WebhookReceiver(status=500)  # nothing is delivered until a test says so


@pytest.fixture
async def harness(
    stack: AsyncExitStack,
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> Harness:
    return await start_harness(
        stack,
        kafka=kafka_settings,
        database=database,
        topics=topics,
        playbook=write_playbook(tmp_path / "p.yaml", PLAYBOOK),
        receivers={"crm": receiver},
    )


def customer(cid: str, purchases: int, spend: str, quiet_days: int) -> CustomerState:
    return CustomerState(
        customer_id=cid,
        purchases_lifetime=purchases,
        net_spend_lifetime=Decimal(spend),
        first_purchase_at=NOW - timedelta(days=400),
        last_purchase_at=NOW - timedelta(days=quiet_days),
    )


def change(cid: str, dimension: str, to: str) -> Change:
    return Change(
        customer_id=cid,
        dimension=dimension,
        from_label=None,
        to=Assignment(to, NOW, f"{dimension}.{to}", "test", {}, "t"),
        cause=f"event:shop/{cid}",
        effective_at=NOW,
    )


async def publish(harness: Harness, changes: list[tuple[Change, Scored | None]]) -> None:
    """Records as the classifier's change_records builds them, with its scores."""
    scores = {c.customer_id: s for c, s in changes if s is not None}
    records = change_records([(change_id(c), c) for c, _ in changes], harness.topics, scores)
    await harness.changes(
        [
            e
            for t, e in records
            if t == harness.topics.classification_changed and isinstance(e, EmittedEvent)
        ]
    )


async def all_pages(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query = {**params, "limit": 2, **({"after": after} if after else {})}
        page = (await client.get("/v1/actions", params=query)).json()
        items += page["items"]
        after = page["next"]
        if after is None:
            return items


def key(item: dict[str, Any]) -> tuple[Any, ...]:
    due = item["due_at"]
    return queue_key(
        action_id=item["action_id"],
        status=item["status"],
        priority_class=item["priority_class"],
        value_at_risk=item["value_at_risk"],
        due_at=datetime.fromisoformat(due) if due else None,
    )


async def test_the_queue_is_ordered_by_class_then_value_at_risk_with_the_classifiers_scores(
    harness: Harness,
) -> None:
    tag = unique("q")
    states = {
        "low": customer(f"{tag}-low", 2, "60", 200),
        "high": customer(f"{tag}-high", 12, "9000", 150),
        "mid": customer(f"{tag}-mid", 5, "900", 100),
        "crit-low": customer(f"{tag}-crit-low", 2, "40", 30),
        "crit-high": customer(f"{tag}-crit-high", 20, "20000", 120),
    }
    scored = dict(
        zip(
            states,
            change_scores([(s, NOW) for s in states.values()], MODEL, churn_config({})),
            strict=True,
        )
    )
    assert all(s is not None for s in scored.values())
    unscored = f"{tag}-unscored"
    await publish(
        harness,
        [
            *[
                (change(states[n].customer_id, "value_tier", "VIP"), scored[n])
                for n in ("low", "high", "mid")
            ],
            *[
                (change(states[n].customer_id, "problem", "escalated"), scored[n])
                for n in ("crit-low", "crit-high")
            ],
            (change(unscored, "value_tier", "VIP"), None),
        ],
    )
    await eventually(harness.rows, lambda r: len(r) == 6, what="six actions")

    queue = await all_pages(harness.client)
    assert len(queue) == 6
    assert [i["action_id"] for i in queue] == [i["action_id"] for i in sorted(queue, key=key)]
    vip = sorted(("low", "high", "mid"), key=lambda n: -scored[n].value_at_risk)  # type: ignore[union-attr]
    crit = sorted(("crit-low", "crit-high"), key=lambda n: -scored[n].value_at_risk)  # type: ignore[union-attr]
    expected = [states[n].customer_id for n in (*crit, *vip)] + [unscored]
    assert [i["customer_id"] for i in queue] == expected
    by_customer = {i["customer_id"]: i for i in queue}
    for name, state in states.items():
        item, s = by_customer[state.customer_id], scored[name]
        assert s is not None
        assert (item["churn_probability"], item["clv"], item["value_at_risk"]) == (
            s.churn_probability,
            s.clv,
            s.value_at_risk,
        )
    assert by_customer[unscored]["value_at_risk"] is None
    # Ordered by id on request, as before.
    by_id = await all_pages(harness.client, order="id")
    assert [i["action_id"] for i in by_id] == sorted(i["action_id"] for i in queue)
    # Escalations are due a second after they were planned: they turn overdue, the rest not.
    late = await eventually(
        lambda: all_pages(harness.client),
        lambda items: sum(i["overdue"] for i in items) == 2,
        what="the escalations overdue",
    )
    assert {i["kind"] for i in late if i["overdue"]} == {"escalation"}
    bad = await harness.client.get("/v1/actions", params={"after": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "after"


async def test_operators_reassign_and_cancel_and_a_cancelled_action_is_never_delivered(
    harness: Harness, receiver: WebhookReceiver, database: DatabaseSettings
) -> None:
    tag = unique("ops")
    await publish(
        harness,
        [(change(f"{tag}-{n}", "value_tier", "VIP"), None) for n in ("a", "b", "c")],
    )
    rows = await eventually(harness.rows, lambda r: len(r) == 3, what="three actions")
    a, b, c = sorted(rows, key=lambda r: r["customer_id"])
    # Every delivery fails for now: all of them are attempted and none accepted.
    await eventually(lambda: _attempts(receiver), lambda n: n >= 3, what="delivery attempts")

    moved = await harness.client.post(
        f"/v1/actions/{a['action_id']}/reassign", json={"owner": "person:ana", "note": "knows them"}
    )
    assert moved.status_code == 200
    assert (moved.json()["owner"], moved.json()["owner_note"]) == ("person:ana", "knows them")
    mine = (await harness.client.get("/v1/actions", params={"owner": "person:ana"})).json()
    assert [i["action_id"] for i in mine["items"]] == [a["action_id"]]

    cancelled = await harness.client.post(
        f"/v1/actions/{b['action_id']}/cancel", json={"reason": "customer asked us not to"}
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = await harness.client.post(
        f"/v1/actions/{b['action_id']}/cancel", json={"reason": "twice"}
    )
    assert again.status_code == 200
    assert again.json()["cancel_reason"] == "customer asked us not to"  # unchanged
    queue = (await harness.client.get("/v1/actions")).json()["items"]
    assert queue[-1]["action_id"] == b["action_id"], "cancelled work leaves the head of the queue"

    # The receiver recovers and every failed delivery is sent again: all but the cancelled one.
    receiver.status = 200
    await harness.client.post("/v1/deliveries:retry-dead", json={})
    await eventually(
        lambda: _ids(receiver),
        lambda ids: {a["action_id"], c["action_id"]} <= ids,
        timeout=30,
        what="the other actions delivered",
    )
    await harness.client.post("/v1/deliveries:retry-dead", json={})
    assert b["action_id"] not in receiver.ids()
    deliveries = (
        await harness.client.get("/v1/deliveries", params={"action": b["action_id"]})
    ).json()["items"]
    assert {d["state"] for d in deliveries} == {"cancelled"}

    done = await harness.client.post(
        f"/v1/actions/{c['action_id']}/complete", json={"outcome": "done"}
    )
    assert done.status_code == 200
    conflict = await harness.client.post(
        f"/v1/actions/{c['action_id']}/cancel", json={"reason": "too late"}
    )
    assert conflict.status_code == 409
    assert conflict.headers["content-type"].startswith("application/problem+json")
    assert (
        await harness.client.post(f"/v1/actions/{c['action_id']}/reassign", json={"owner": "x"})
    ).status_code == 409
    missing = await harness.client.post("/v1/actions/nope/cancel", json={"reason": "x"})
    assert missing.status_code == 404
    empty = await harness.client.post(f"/v1/actions/{a['action_id']}/cancel", json={"reason": ""})
    assert empty.status_code == 422

    read_only = bearer(await api_key(database, {Role.READ}, name="dashboard"))
    await eventually(
        lambda: harness.client.get("/v1/actions", headers=read_only),
        lambda r: r.status_code == 200,
        what="the read key known",
    )
    for path, body in (("cancel", {"reason": "x"}), ("reassign", {"owner": "x"})):
        denied = await harness.client.post(
            f"/v1/actions/{a['action_id']}/{path}", json=body, headers=read_only
        )
        assert denied.status_code == 403
    assert (await harness.client.get(f"/v1/actions/{a['action_id']}")).json()["status"] == "open"

    # Operators' calls are in the audit log, the refused ones too.
    async def audited() -> list[tuple[str, int]]:
        async with harness.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT route, status FROM audit_log WHERE target->>'action_id' = :a"
                    " ORDER BY audit_id"
                ),
                {"a": a["action_id"]},
            )
            return [(r.route, r.status) for r in rows]

    trail = await eventually(audited, lambda rows: len(rows) >= 4, what="the audit trail")
    assert ("/v1/actions/{action_id}/reassign", 200) in trail
    assert ("/v1/actions/{action_id}/cancel", 403) in trail
    assert ("/v1/actions/{action_id}/reassign", 403) in trail


async def _attempts(receiver: WebhookReceiver) -> int:
    return receiver.attempts


async def _ids(receiver: WebhookReceiver) -> set[str]:
    return receiver.ids()
