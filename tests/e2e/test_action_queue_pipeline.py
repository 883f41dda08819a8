"""The care-action queue with real scores: ingest, classifier and notifier as processes; the
classifier fits its churn model on the store's history and re-judges every customer, its
change records carry each customer's churn probability, CLV and value at risk, and the
notifier's `GET /v1/actions` ranks the actions they cause by them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline, running_pipeline
from tests.integration.helpers import eventually
from tests.notifier_support import playbook_text, write_playbook
from tests.support import Servers, unique
from tierflow_notifier.domain.queue import OPEN_STATES, queue_key

pytestmark = pytest.mark.e2e

CUSTOMERS = 60  # the churn model is fitted on at least 50 customers' purchase history


@pytest.fixture
def stack(servers: Servers, log_dir: Path, tmp_path: Path) -> Iterator[Pipeline]:
    playbook = write_playbook(tmp_path / "care.yaml", playbook_text(churn_to="*"))
    extra = {
        "NOTIFIER_EVENTS_GROUP_ID": unique("notifier_events"),
        "NOTIFIER_PLAYBOOKS_FILE": str(playbook),
    }
    with running_pipeline(servers, log_dir, extra) as pipeline:
        yield pipeline


def history(now: datetime) -> list[dict[str, Any]]:
    """Steady, lapsing and one-time buyers of different spend: different values at risk."""
    events = []
    for c in range(CUSTOMERS):
        gap, count = 7 + (c % 5) * 20, 1 + c % 6
        last = now - timedelta(days=(c % 4) * 60 + 1)
        amount = f"{20 + (c % 7) * 35}.00"
        for k in range(count):
            event_id = f"q-{c}-{k}"
            events.append(
                {
                    "specversion": "1.0",
                    "id": event_id,
                    "source": "shop",
                    "type": "purchase",
                    "subject": f"q-{c}",
                    "time": (last - timedelta(days=gap * k)).isoformat(),
                    "data": {"order_id": event_id, "amount": amount, "currency": "USD"},
                }
            )
    return events


def key_of(item: dict[str, Any]) -> tuple[Any, ...]:
    due = item["due_at"]
    return queue_key(
        action_id=item["action_id"],
        status=item["status"],
        priority_class=item["priority_class"],
        value_at_risk=item["value_at_risk"],
        due_at=datetime.fromisoformat(due) if due else None,
    )


async def test_actions_are_ranked_by_the_value_at_risk_the_classifier_computed(
    stack: Pipeline,
) -> None:
    headers = {"authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        resp = await http.post(
            f"{stack.ingest.url}/v1/events:batch",
            json=history(datetime.now(UTC)),
            headers={**headers, "content-type": "application/cloudevents-batch+json"},
        )
        assert resp.status_code == 200, resp.text[:500]

        async def fit() -> httpx.Response:
            return await http.post(f"{stack.classifier.url}/v1/models/churn:fit")

        await eventually(fit, lambda r: r.status_code == 200, timeout=60, what="churn fitted")

        async def queue() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            after: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 7, **({"after": after} if after else {})}
                page = (await http.get(f"{stack.notifier.url}/v1/actions", params=params)).json()
                items += page["items"]
                after = page["next"]
                if after is None:
                    return items

        # The fit re-judges everyone: churn-risk changes, now with scores, cause care messages.
        items = await eventually(
            queue,
            lambda found: sum(i["value_at_risk"] is not None for i in found) >= 10,
            timeout=60,
            what="actions planned with scores",
        )
        assert [i["action_id"] for i in items] == [
            i["action_id"] for i in sorted(items, key=key_of)
        ]
        scored = [i for i in items if i["value_at_risk"] is not None]
        for item in scored:
            p, clv = item["churn_probability"], item["clv"]
            assert 0.0 <= p <= 1.0
            assert math.isclose(item["value_at_risk"], p * clv, rel_tol=1e-9)
        # The numbers are the classifier's for that customer (its read API, moments later).
        sample = max(scored, key=lambda i: i["value_at_risk"])
        now = await http.get(f"{stack.classifier.url}/v1/customers/{sample['customer_id']}")
        scores = now.json()["scores"]
        assert math.isclose(scores["clv"], sample["clv"], rel_tol=0.05)
        assert math.isclose(scores["churn_probability"], sample["churn_probability"], abs_tol=0.05)
        # Within open care messages (one class), more value at risk comes first.
        messages = [
            i
            for i in items
            if i["status"] in OPEN_STATES and i["priority_class"] == "marketing" and i in scored
        ]
        risks = [i["value_at_risk"] for i in messages]
        assert len(set(risks)) > 1
        assert risks == sorted(risks, reverse=True)
