"""What a newcomer does after `make run`: POST a purchase, and within 2 seconds read the
customer's value tier from the classifier API and see the tier change on the topic."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.support import read_topic

pytestmark = pytest.mark.e2e


async def test_purchase_to_tier_within_two_seconds(pipeline: Pipeline) -> None:
    event = {
        "specversion": "1.0",
        "id": "order-1",
        "source": "shop",
        "type": "purchase",
        "subject": "newcomer-1",
        "time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "data": {"order_id": "1", "amount": "129.90", "currency": "USD"},
    }
    async with httpx.AsyncClient(timeout=5, headers=pipeline.auth) as client:
        resp = await client.post(
            f"{pipeline.ingest.url}/v1/events",
            json=event,
            headers={"content-type": "application/cloudevents+json", **pipeline.auth},
        )
        assert resp.status_code == 202, resp.text
        accepted_at = time.monotonic()
        body = None
        while time.monotonic() - accepted_at < 2.0:
            got = await client.get(f"{pipeline.classifier.url}/v1/customers/newcomer-1")
            if got.status_code == 200:
                body = got.json()
                break
            await asyncio.sleep(0.05)
        assert body is not None, "customer not classified within 2 s of the 202"
        assert body["dimensions"]["value_tier"]["label"] == "regular"
        assert body["features"]["purchases_lifetime"] == 1
        assert body["features"]["net_spend_lifetime"] == "129.9"

        (tier_change,) = await read_topic(
            pipeline.kafka, pipeline.topics.tier_changed, expect=1, timeout=2.0
        )
        assert tier_change["key"] == b"newcomer-1"
        assert tier_change["event"]["data"]["to"] == "regular"
        assert tier_change["event"]["data"]["cause"] == "event:shop/order-1"

        # The notifier turned the first assignment into an onboarding care action.
        deadline = time.monotonic() + 10
        actions: list[dict[str, object]] = []
        while time.monotonic() < deadline and not actions:
            listed = await client.get(
                f"{pipeline.notifier.url}/v1/actions", params={"customer": "newcomer-1"}
            )
            actions = listed.json()["items"]
            await asyncio.sleep(0.05)
        assert [a["rule_id"] for a in actions] == ["new-customer-onboarding"]
