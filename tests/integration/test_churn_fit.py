"""The churn model fitted on the store's own history, through the running classifier: events
in, POST /v1/models/churn:fit, the fit's time split, learned weights and holdout metrics out of
GET /v1/models/churn, and customers scored by the store's own weights and calibration."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest

from tests.integration.helpers import classifier_client, eventually, produce, purchase_event
from tierflow_classifier.domain.churn.synthetic import SyntheticStore, generate
from tierflow_common.contract import EmittedEvent
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

pytestmark = pytest.mark.integration

# Small enough to replay in seconds, big enough for a time split (200 customers at least).
STORE = SyntheticStore(customers=260, cutoff_day=270.0, horizon_days=90.0, complaint_share=0.3)


@pytest.fixture
async def classifier(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> AsyncIterator[httpx.AsyncClient]:
    consumer = ConsumerSettings(max_batch=200)
    async with classifier_client(kafka_settings, database, topics, consumer=consumer) as client:
        yield client


def store_events(now: datetime) -> list[EmittedEvent]:
    """The synthetic store's history, its last day ending an hour ago."""
    history, _ = generate(STORE, np.random.default_rng(7))
    end = now - timedelta(hours=1)

    def when(day: float) -> datetime:
        return end - timedelta(days=STORE.as_of_day - day)

    events = [
        # Two orders on the first purchase day of customer 0: one purchase for the model.
        purchase_event("same-day-2", "syn-0", "5", time=when(float(history.purchase_day[0]))),
    ]
    for k, (c, day, amount) in enumerate(
        zip(history.purchase_customer, history.purchase_day, history.purchase_amount, strict=True)
    ):
        events.append(purchase_event(f"syn-p{k}", f"syn-{c}", f"{amount:.2f}", time=when(day)))
    for k, (c, opened, resolved) in enumerate(
        zip(
            history.complaint_customer,
            history.complaint_opened,
            history.complaint_resolved,
            strict=True,
        )
    ):
        for kind, day in (("complaint", opened), ("complaint_resolved", resolved)):
            if math.isfinite(day) and when(day) < end:
                events.append(
                    EmittedEvent(
                        id=f"syn-{kind}-{k}",
                        type="interaction",
                        source="care",
                        subject=f"syn-{c}",
                        time=when(day),
                        data={"kind": kind, "channel": "phone", "complaint_id": f"T-{k}"},
                    )
                )
    for k, (c, day, value) in enumerate(
        zip(
            history.satisfaction_customer,
            history.satisfaction_day,
            history.satisfaction_value,
            strict=True,
        )
    ):
        if when(day) < end:
            events.append(
                EmittedEvent(
                    id=f"syn-fb-{k}",
                    type="feedback",
                    source="survey",
                    subject=f"syn-{c}",
                    time=when(day),
                    data={"satisfaction": round(value * 4) + 1},
                )
            )
    return events


async def test_the_fit_uses_the_stores_history_split_in_time_and_reports_its_holdout(
    classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    events = store_events(datetime.now(UTC))
    purchases = sum(1 for e in events if e.type == "purchase")
    await produce(kafka_settings, topics.customer_events, events)

    async def applied() -> int:
        total = 0
        for c in range(STORE.customers):
            resp = await classifier.get(f"/v1/customers/syn-{c}")
            if resp.status_code == 200:
                total += resp.json()["features"]["purchases_lifetime"]
        return total

    await eventually(applied, lambda n: n == purchases, timeout=90)

    fitted = await classifier.post("/v1/models/churn:fit")
    assert fitted.status_code == 200, fitted.text
    model = fitted.json()
    assert model == (await classifier.get("/v1/models/churn")).json()

    split = model["time_split"]
    assert split["horizon_days"] == 90.0  # the shipped rule set's churn_horizon_days
    assert split["calibrated"] is True
    assert split["fallback"] is None
    assert split["folds"] == 5
    cutoff = datetime.fromisoformat(split["calibration_window_end"])
    assert datetime.fromisoformat(split["labels_until"]) - cutoff == timedelta(days=90)

    holdout = model["holdout"]
    assert holdout["customers"] == STORE.customers
    assert 0.5 < holdout["auc"] <= 1.0
    assert holdout["log_loss"] > 0
    assert 0 < holdout["brier"] < 0.25
    assert {row["level"] for row in holdout["calibration"]} <= {"low", "medium", "high", "critical"}
    assert sum(row["customers"] for row in holdout["calibration"]) == STORE.customers

    terms = {t["term"]: t for t in model["terms"]}
    assert set(terms) == {
        "intercept",
        "model",
        "spend",
        "open_complaints",
        "low_satisfaction",
        "frequency_decline",
    }
    # The store has complaints and surveys: both weights come from its own history.
    for name in ("open_complaints", "low_satisfaction"):
        assert terms[name]["learned"] is True, terms[name]
        assert terms[name]["customers_with_signal"] >= 30
        assert model["weights"][name] == terms[name]["weight"]

    # Customers are scored by the store's weights and calibration; same-day orders merged.
    async def scored() -> dict[str, object] | None:
        resp = await classifier.get("/v1/customers/syn-0")
        body: dict[str, object] = resp.json()
        return body

    state = await eventually(
        scored,
        lambda c: c is not None and c["scores"]["model_version"] == model["version"],  # type: ignore[index]
        timeout=30,
    )
    assert state is not None
    explanation = state["scores"]["explanation"]  # type: ignore[index]
    assert explanation["calibrated"] is True
    for name, weight in model["weights"].items():
        if name != "intercept":
            assert explanation["contributions"][name]["weight"] == weight
    orders = state["features"]["purchases_lifetime"]  # type: ignore[index]
    assert explanation["inputs"]["x"] == orders - 2  # two orders on one day: one purchase


async def test_a_small_store_is_scored_by_the_priors_and_the_model_says_why(
    classifier: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    end = datetime.now(UTC) - timedelta(hours=1)
    events = [
        purchase_event(f"small-{c}-{k}", f"small-{c}", "20", time=end - timedelta(days=30 * k))
        for c in range(60)
        for k in range(1 + c % 4)
    ]
    await produce(kafka_settings, topics.customer_events, events)

    async def applied() -> int:
        total = 0
        for c in range(60):
            resp = await classifier.get(f"/v1/customers/small-{c}")
            if resp.status_code == 200:
                total += int(resp.json()["features"]["purchases_lifetime"])
        return total

    await eventually(applied, lambda n: n == len(events), timeout=30)
    fitted = await classifier.post("/v1/models/churn:fit")
    assert fitted.status_code == 200, fitted.text
    model = fitted.json()
    split = model["time_split"]
    assert split["calibrated"] is False
    assert "need 200 for a time split" in split["fallback"]
    assert model["holdout"] is None
    assert all(not t["learned"] and t["weight"] == t["prior"] for t in model["terms"])
