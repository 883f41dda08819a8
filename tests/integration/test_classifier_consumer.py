"""The classifier against the real broker and PostgreSQL: exactly-once application, dead letters,
tier-change events through the outbox, and the read API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.access import app_client
from tests.integration.helpers import classifier_client, eventually, produce, purchase_event
from tests.support import ROOT, read_topic, unique
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.bootstrap import create_app
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.contract import EmittedEvent
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def classifier(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    consumer = ConsumerSettings(max_batch=50)
    async with classifier_client(kafka_settings, database, topics, consumer=consumer) as client:
        yield client


async def customer(client: httpx.AsyncClient, cid: str) -> dict[str, object] | None:
    resp = await client.get(f"/v1/customers/{cid}")
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


async def test_purchases_are_applied_once_and_tier_changes_published(
    classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    events = [purchase_event(f"o-{i}", "alice", "700.00") for i in range(3)]
    # The same event id resent twice more (upstream retry) must not count again.
    await produce(kafka_settings, topics.customer_events, [*events, events[0], events[1]])

    state = await eventually(
        lambda: customer(classifier, "alice"),
        lambda c: c is not None and c["features"]["purchases_lifetime"] == 3,  # type: ignore[index]
    )
    assert state is not None
    features = state["features"]
    assert features["net_spend_lifetime"] == "2100"  # type: ignore[index]
    tier = state["dimensions"]["value_tier"]  # type: ignore[index]
    assert tier["label"] == "important"
    # The explanation is the one that moved the customer: the second purchase crossed 1000.
    assert tier["rule"] == "value_tier.rules[1]"
    assert tier["explanation"]["inputs"] == {"spend_window": 1400.0, "important_spend": 1000.0}
    assert "spend_window >= important_spend" in tier["reason"]

    changes = await read_topic(kafka_settings, topics.tier_changed, expect=2)
    assert [c["event"]["data"]["to"] for c in changes] == ["regular", "important"]
    assert [c["event"]["data"]["from"] for c in changes] == [None, "regular"]
    assert all(c["key"] == b"alice" for c in changes)
    assert all(c["event"]["type"] == "tierflow.tier.changed" for c in changes)
    # The API shows every dimension; the classification topic carries the first assignments
    # that say something (a default label such as `unknown` or `unscored` is not a change;
    # the value tier always is) plus the upgrade. Its value-tier changes are exactly the tier
    # topic's, with the same ids.
    dimensions = len(load_rules(ROOT / "config" / "classifier.yaml").dimensions)
    assert len(state["dimensions"]) == dimensions  # type: ignore[arg-type]
    loyalty = state["dimensions"]["loyalty"]  # type: ignore[index]
    assert loyalty["label"] == "ordinary"
    assert loyalty["reason"] == "no rule matched"
    assert loyalty["explanation"]["evaluated"][0].startswith("(repeat_rate >= loyal_repeat_rate")
    # Contract version 2: one record per cause (the first purchase, the upgrade), holding
    # every dimension that cause changed.
    records = await read_topic(kafka_settings, topics.classification_changed, expect=2)
    assert [r["event"]["type"] for r in records] == ["tierflow.classification.changed.v2"] * 2
    everything = [ch for r in records for ch in r["event"]["data"]["changes"]]
    assert sorted((ch["dimension"], ch["to"]) for ch in everything) == [
        ("behaviour", "low_frequency"),
        ("lifecycle", "new"),
        ("needs", "product_focused"),
        ("value_tier", "important"),
        ("value_tier", "regular"),
    ]
    tier_ids = {ch["change_id"] for ch in everything if ch["dimension"] == "value_tier"}
    assert tier_ids == {c["event"]["id"] for c in changes}
    # One event, one id: no record of one topic shares its id with a record of the other.
    assert not {r["event"]["id"] for r in records} & tier_ids


async def test_unknown_customer_is_404_problem(classifier: httpx.AsyncClient) -> None:
    resp = await classifier.get("/v1/customers/nobody")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    assert "nobody" in resp.json()["detail"]


async def test_poison_records_go_to_the_dead_letter_topic_and_do_not_block(
    classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    not_cloudevent: tuple[bytes, bytes, list[Any]] = (b"bob", b'{"hello": 1}', [])
    bad_currency = purchase_event("o-x", "bob", "10", currency="XAU")
    good = purchase_event("o-ok", "bob", "10")
    over_refund = EmittedEvent(
        id="r-1",
        type="refund",
        source="shop",
        subject="bob",
        time=datetime.now(UTC),
        data={"order_id": "o-ok", "amount": "25", "currency": "USD"},
    )
    await produce(
        kafka_settings, topics.customer_events, [not_cloudevent, bad_currency, good, over_refund]
    )

    await eventually(
        lambda: customer(classifier, "bob"),
        lambda c: c is not None and c["features"]["purchases_lifetime"] == 1,  # type: ignore[index]
    )
    dead = await read_topic(kafka_settings, topics.classifier_dlq, expect=3)
    reasons = sorted(d["headers"]["dlq_reason"].decode() for d in dead)
    assert any("not a CloudEvents record" in r for r in reasons)
    assert any("no exchange rate for XAU" in r for r in reasons)
    assert any("more than its 10" in r for r in reasons), reasons
    assert {d["headers"]["dlq_source_topic"] for d in dead} == {topics.customer_events.encode()}
    state = await customer(classifier, "bob")
    assert state is not None
    assert state["features"]["net_spend_lifetime"] == "10"  # type: ignore[index]


async def test_spend_sums_are_exact_decimals(
    classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    amounts = ["0.10", "0.20", "19.99", "1000000.01", "0.000001"]
    await produce(
        kafka_settings,
        topics.customer_events,
        [purchase_event(f"d-{i}", "carol", a) for i, a in enumerate(amounts)],
    )
    state = await eventually(
        lambda: customer(classifier, "carol"),
        lambda c: c is not None and c["features"]["purchases_lifetime"] == 5,  # type: ignore[index]
    )
    assert state is not None
    expected = sum((Decimal(a) for a in amounts), Decimal(0))
    assert Decimal(state["features"]["net_spend_lifetime"]) == expected  # type: ignore[index]


@pytest.fixture
async def fast_clock_classifier(
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    """The shipped rules with onboarding shortened to ~9 s, so time visibly moves a class."""
    rules = (ROOT / "config" / "classifier.yaml").read_text()
    fast = tmp_path / "rules.yaml"
    fast.write_text(rules.replace("onboarding_days: 30 ", "onboarding_days: 0.0001 "))
    app: FastAPI = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=ClassifierSettings(rules_file=fast, group_id=unique("classifier")),
    )
    async with app_client(app, database, base_url="http://classifier") as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        yield client


async def test_time_alone_moves_a_class_with_history_and_as_of(
    fast_clock_classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    client = fast_clock_classifier
    bought_at = datetime.now(UTC)
    await produce(
        kafka_settings,
        topics.customer_events,
        [purchase_event("t-1", "erin", "10", time=bought_at)],
    )
    state = await eventually(lambda: customer(client, "erin"), lambda c: c is not None)
    assert state is not None
    assert state["dimensions"]["lifecycle"]["label"] == "new"  # type: ignore[index]
    deadline = datetime.fromisoformat(str(state["next_review_at"]))
    # No further event: the scheduler alone must move the customer at the deadline.
    state = await eventually(
        lambda: customer(client, "erin"),
        lambda c: c is not None and c["dimensions"]["lifecycle"]["label"] == "active",  # type: ignore[index]
        timeout=15,
    )
    assert state is not None
    lifecycle = state["dimensions"]["lifecycle"]  # type: ignore[index]
    assert datetime.fromisoformat(lifecycle["since"]) == deadline

    history = (
        await client.get("/v1/customers/erin/history", params={"dimension": "lifecycle"})
    ).json()
    assert [(c["from"], c["to"]) for c in history["changes"]] == [(None, "new"), ("new", "active")]
    assert history["changes"][1]["cause"] == f"time:{deadline.isoformat()}"
    before = (
        await client.get(
            "/v1/customers/erin",
            params={"as_of": (deadline - timedelta(milliseconds=500)).isoformat()},
        )
    ).json()
    assert before["dimensions"]["lifecycle"]["to"] == "new"
    assert before["dimensions"]["value_tier"]["to"] == "regular"
    segment = (await client.get("/v1/segments/lifecycle/active")).json()
    assert {m["customer_id"] for m in segment["members"]} == {"erin"}
    distribution = (await client.get("/v1/stats/distribution")).json()
    assert distribution["lifecycle"] == {"active": 1}
    assert distribution["value_tier"] == {"regular": 1}
    # A dimension still at its first, default label (not a change, so not in the history)
    # still shows everywhere: as of a past time, in its segment and in the distribution.
    assert before["dimensions"]["loyalty"]["to"] == "ordinary"
    assert before["dimensions"]["loyalty"]["cause"] == before["dimensions"]["value_tier"]["cause"]
    assert len(before["dimensions"]) == len(
        load_rules(ROOT / "config" / "classifier.yaml").dimensions
    )
    ordinary = (await client.get("/v1/segments/loyalty/ordinary")).json()
    assert {m["customer_id"] for m in ordinary["members"]} == {"erin"}
    assert (await client.get("/v1/segments/loyalty/loyal")).json()["members"] == []
    assert distribution["loyalty"] == {"ordinary": 1}
    assert distribution["geography"] == {"unknown": 1}
    records = await read_topic(kafka_settings, topics.classification_changed, expect=2)
    assert ("new", "active") in {
        (ch["from"], ch["to"]) for r in records for ch in r["event"]["data"]["changes"]
    }


async def test_churn_model_is_fitted_on_the_stores_history_and_scores_customers(
    classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    now = datetime.now(UTC)
    events = []
    for c in range(120):
        # Regular buyers, lapsed buyers and one-timers, so the model has something to learn.
        gap = 7 + (c % 5) * 20
        count = 1 + c % 6
        last = now - timedelta(days=(c % 4) * 60 + 1)
        for k in range(count):
            events.append(
                purchase_event(
                    f"h-{c}-{k}",
                    f"hist-{c}",
                    str(20 + c % 7 * 5),
                    time=last - timedelta(days=gap * (count - 1 - k)),
                )
            )
    await produce(kafka_settings, topics.customer_events, events)

    async def applied() -> int:
        rows = [await customer(classifier, f"hist-{c}") for c in range(120)]
        return sum(r["features"]["purchases_lifetime"] for r in rows if r)  # type: ignore[index]

    await eventually(applied, lambda n: n == len(events), timeout=30)
    missing = await classifier.get("/v1/models/churn")
    assert missing.status_code == 404

    fitted = await classifier.post("/v1/models/churn:fit")
    assert fitted.status_code == 200, fitted.text
    model = fitted.json()
    assert model["customers"] == 120
    assert set(model["parameters"]) == {"r", "alpha", "a", "b"}
    assert all(v > 0 for v in model["parameters"].values())
    assert model["log_likelihood"] < 0
    assert (await classifier.get("/v1/models/churn")).json()["version"] == model["version"]

    # The new model re-scores everyone in the background: churn_risk leaves "unscored".
    state = await eventually(
        lambda: customer(classifier, "hist-3"),
        lambda c: c is not None and c["dimensions"]["churn_risk"]["label"] != "unscored",  # type: ignore[index]
        timeout=30,
    )
    assert state is not None
    scores = state["scores"]
    assert scores["model_version"] == model["version"]  # type: ignore[index]
    assert 0.0 <= scores["churn_probability"] <= 1.0  # type: ignore[index]
    assert scores["value_at_risk"] <= scores["clv"] + 1e-9  # type: ignore[index]
    contributions = scores["explanation"]["contributions"]  # type: ignore[index]
    logit = sum(c["contribution"] for c in contributions.values())
    assert abs(logit - scores["explanation"]["logit"]) < 1e-9  # type: ignore[index]
    assert state["dimensions"]["churn_risk"]["label"] == scores["churn_level"]  # type: ignore[index]
