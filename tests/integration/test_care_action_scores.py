"""Value at risk on every care action, on the real broker and PostgreSQL: the change's scores
are on the action, its webhook body (the CareActionData contract) and, for scheduled actions
(a cadence here), the customer's latest known scores; `GET /v1/actions` takes `sort` (and
`order`, its alias)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.integration.helpers import eventually
from tests.integration.test_notifier_queue import MODEL, NOW, change, customer, publish
from tests.notifier_support import Harness, WebhookReceiver, start_harness, write_playbook
from tests.published_events import from_kafka
from tests.support import raw_records, unique
from tierflow_classifier.domain.change_scores import change_scores
from tierflow_classifier.domain.churn_features import churn_config
from tierflow_common.contract import CareActionData
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration

PLAYBOOK = """playbook_version: "scores-test"
contact_policy:
  default_timezone: UTC
rules:
  - id: vip-account-manager
    when: {dimension: value_tier, from: "*", to: VIP}
    action: {kind: account_manager_assignment, priority: 1, owner: "queue:am", due_in: 2d}
  - id: vip-cadence
    when: {cadence: {dimension: value_tier, label: VIP, every: 1s}}
    action: {kind: revisit, priority: 2, owner: "queue:am", due_in: 7d}
"""


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
async def receiver() -> WebhookReceiver:
    return WebhookReceiver()


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


async def test_change_and_scheduled_actions_carry_value_at_risk_to_the_api_and_webhooks(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    state = customer(unique("var"), 12, "9000", 150)
    (scored,) = change_scores([(state, NOW)], MODEL, churn_config({}))
    assert scored is not None
    assert scored.value_at_risk
    await publish(harness, [(change(state.customer_id, "value_tier", "VIP"), scored)])
    rows = await eventually(
        harness.rows,
        lambda r: {x["rule_id"] for x in r} >= {"vip-account-manager", "vip-cadence"},
        what="the change's action and the first cadence revisit",
    )
    expected = (scored.churn_probability, scored.clv, scored.value_at_risk)
    items = (await harness.client.get("/v1/actions", params={"sort": "queue"})).json()["items"]
    assert items, "the queue lists the actions"
    for item in items:
        assert (item["churn_probability"], item["clv"], item["value_at_risk"]) == expected
    ids = {r["action_id"] for r in rows}
    received = await eventually(
        lambda: _received(receiver),
        lambda got: ids <= set(got),
        timeout=30,
        what="every action's webhook",
    )
    for action_id in ids:
        data = CareActionData.model_validate(received[action_id])
        assert (data.churn_probability, data.clv, data.value_at_risk) == expected
    # The care-actions records, read with the CloudEvents SDK, carry the same scores.
    topic = harness.topics.care_actions
    published = await eventually(
        lambda: raw_records(harness.kafka, topic),
        lambda records: ids <= {e.id for e in from_kafka(topic, records)},
        timeout=30,
        what="every action on care-actions",
    )
    for event in from_kafka(topic, published):
        if event.id in ids:
            data = CareActionData.model_validate(event.data)
            assert (data.churn_probability, data.clv, data.value_at_risk) == expected

    by_sort = (await harness.client.get("/v1/actions", params={"sort": "id"})).json()["items"]
    by_alias = (await harness.client.get("/v1/actions", params={"order": "id"})).json()["items"]
    assert [i["action_id"] for i in by_sort] == sorted(i["action_id"] for i in by_sort)
    # The cadence keeps adding revisits: the alias's page is the same order, maybe longer.
    alias_ids = [i["action_id"] for i in by_alias]
    assert alias_ids == sorted(alias_ids)
    assert {i["action_id"] for i in by_sort} <= set(alias_ids)
    both = await harness.client.get("/v1/actions", params={"sort": "id", "order": "queue"})
    assert both.status_code == 422
    assert both.headers["content-type"].startswith("application/problem+json")
    assert both.json()["errors"][0]["field"] == "order"
    wrong = await harness.client.get("/v1/actions", params={"sort": "price"})
    assert wrong.status_code == 422


async def _received(receiver: WebhookReceiver) -> dict[str, dict[str, object]]:
    return {wid: got[0].body["data"] for wid, got in receiver.accepted.items() if got}
