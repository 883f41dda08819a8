"""Erasure across the three running services: `DELETE /v1/customers/{id}` on the classifier and
an upstream `customer.erased` event both leave nothing of the customer in any service's tables
or API, put a `tierflow.customer.erased` record on `customer-classification-changed`, keep the
erased customer's old events from coming back when resent, and let a later event for the same
id start a new customer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import Pipeline
from tests.integration.helpers import eventually
from tests.support import read_to_end, unique
from tierflow_common.contract import CUSTOMER_ERASED_TYPE
from tierflow_common.db.engine import create_engine
from tierflow_common.keys import create_key

pytestmark = pytest.mark.e2e

# Every table of every service that holds rows naming a customer.
CUSTOMER_TABLES = (
    "customers",
    "customer_labels",
    "classification_changes",
    "processed_events",
    "care_actions",
    "contact_ledger",
    "notifier_schedules",
    "notifier_contacts",
    "notifier_complaints",
)


def event(customer: str, type_: str, data: dict[str, Any], at: datetime, eid: str) -> Any:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": "shop",
        "type": type_,
        "subject": customer,
        "time": at.isoformat(),
        "data": data,
    }


def history(customer: str, at: datetime) -> list[dict[str, Any]]:
    """A first purchase, a profile with contacts and a birthday, an open complaint."""
    return [
        event(
            customer,
            "purchase",
            {"order_id": "1", "amount": "80", "currency": "USD"},
            at,
            f"{customer}-p1",
        ),
        event(
            customer,
            "profile",
            {
                "contacts": {"email": "erase.me@example.com"},
                "birthday": "1990-05-17",
                "timezone": "Europe/Berlin",
            },
            at + timedelta(seconds=1),
            f"{customer}-pr1",
        ),
        event(
            customer,
            "interaction",
            {"kind": "complaint", "complaint_id": "T-1", "note": "late"},
            at + timedelta(seconds=2),
            f"{customer}-c1",
        ),
    ]


async def rows_of(engine: AsyncEngine, customer: str) -> dict[str, int]:
    out: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in CUSTOMER_TABLES:
            out[table] = int(
                await conn.scalar(
                    text(f"SELECT count(*) FROM {table} WHERE customer_id = :c"),
                    {"c": customer},
                )
                or 0
            )
        out["care_deliveries"] = int(
            await conn.scalar(
                text(
                    "SELECT count(*) FROM care_deliveries d JOIN care_actions a "
                    "USING (action_id) WHERE a.customer_id = :c"
                ),
                {"c": customer},
            )
            or 0
        )
        out["ingest_receipts"] = int(
            await conn.scalar(
                # The erasure request's own receipt stays (it holds no customer id).
                text(
                    "SELECT count(*) FROM ingest_receipts WHERE event_id LIKE :p "
                    "AND event_id <> :request"
                ),
                {"p": f"{customer}-%", "request": f"{customer}-erase"},
            )
            or 0
        )
    return out


def gone(rows: dict[str, int]) -> bool:
    return not any(rows.values())


@pytest.fixture
async def engine(pipeline: Pipeline) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(pipeline.database)
    yield eng
    await eng.dispose()


async def test_a_customer_erased_by_api_or_event_is_gone_everywhere(
    pipeline: Pipeline, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        _, admin = await create_key(conn, name="e2e admin", roles=["admin", "read"])
    admin_auth = {"authorization": f"Bearer {admin}"}
    ce = {"content-type": "application/cloudevents-batch+json", **pipeline.auth}
    by_api, by_event, bystander = unique("erase-api"), unique("erase-ev"), unique("keep")
    at = datetime.now(UTC) - timedelta(minutes=5)
    async with httpx.AsyncClient(timeout=10) as http:
        batch = history(by_api, at) + history(by_event, at) + history(bystander, at)
        sent = await http.post(f"{pipeline.ingest.url}/v1/events:batch", json=batch, headers=ce)
        assert sent.status_code in (200, 202), sent.text

        async def state(customer: str) -> dict[str, int]:
            return await rows_of(engine, customer)

        # Everything has reached both services: classified, projected, actions created.
        for customer in (by_api, by_event, bystander):
            await eventually(
                lambda c=customer: state(c),  # type: ignore[misc]
                lambda r: (
                    r["customers"] == 1
                    and r["notifier_contacts"] == 1
                    and r["notifier_complaints"] == 1
                    and r["care_actions"] > 0
                    and r["processed_events"] == 3
                ),
                timeout=60,
                what=f"{customer} in every service",
            )

        # The admin key is known to the classifier within its key refresh.
        erased = await eventually(
            lambda: http.delete(
                f"{pipeline.classifier.url}/v1/customers/{by_api}", headers=admin_auth
            ),
            lambda r: r.status_code != 401,
            what="the admin key accepted",
        )
        assert erased.status_code == 202, erased.text
        body = erased.json()
        assert body["found"] is True
        assert body["erased"]["customers"] == 1
        assert body["erased"]["processed_events"] == 3
        assert body["erased"]["ingest_receipts"] == 3

        # An upstream system asks for the other one.
        request = event(
            by_event,
            "customer.erased",
            {"reference_id": "case-9"},
            datetime.now(UTC),
            f"{by_event}-erase",
        )
        sent = await http.post(
            f"{pipeline.ingest.url}/v1/events",
            json=request,
            headers={"content-type": "application/cloudevents+json", **pipeline.auth},
        )
        assert sent.status_code == 202, sent.text

        for customer in (by_api, by_event):
            await eventually(
                lambda c=customer: state(c),  # type: ignore[misc]
                gone,
                timeout=30,
                what=f"{customer} erased from every table",
            )
            got = await http.get(
                f"{pipeline.classifier.url}/v1/customers/{customer}", headers=admin_auth
            )
            assert got.status_code == 404
            listed = await eventually(
                lambda c=customer: http.get(  # type: ignore[misc]
                    f"{pipeline.notifier.url}/v1/actions",
                    params={"customer": c},
                    headers=admin_auth,
                ),
                lambda r: r.status_code != 401,
                what="the read key accepted by the notifier",
            )
            assert listed.status_code == 200, listed.text
            assert listed.json()["items"] == []
        # Nobody else was touched.
        kept = await state(bystander)
        assert kept["customers"] == 1
        assert kept["care_actions"] > 0

        # The erasures are on the topic for downstream systems.
        records = await read_to_end(pipeline.kafka, pipeline.topics.classification_changed)
        erasures = {r["subject"]: r for r in records if r.get("type") == CUSTOMER_ERASED_TYPE}
        assert set(erasures) >= {by_api, by_event}
        assert b'"cause":"api"' in erasures[by_api]["value"].replace(b" ", b"")
        assert f'"event:shop/{by_event}-erase"'.encode() in erasures[by_event]["value"].replace(
            b" ", b""
        )

        # The erased customer's old events resent change nothing; a later event for the same
        # id starts a new customer (its first purchase, counted once).
        fresh = event(
            by_api,
            "purchase",
            {"order_id": "9", "amount": "5", "currency": "USD"},
            datetime.now(UTC),
            f"{by_api}-new",
        )
        sent = await http.post(
            f"{pipeline.ingest.url}/v1/events:batch", json=[*history(by_api, at), fresh], headers=ce
        )
        assert sent.status_code in (200, 202), sent.text

        async def new_customer() -> httpx.Response:
            return await http.get(
                f"{pipeline.classifier.url}/v1/customers/{by_api}", headers=admin_auth
            )

        reborn = await eventually(new_customer, lambda r: r.status_code == 200, what="new customer")
        features = reborn.json()["features"]
        assert features["purchases_lifetime"] == 1
        assert features["open_complaints"] == 0
        assert reborn.json()["profile"] == {}
        async with engine.connect() as conn:
            ledger = await conn.scalar(
                text("SELECT count(*) FROM processed_events WHERE customer_id = :c"), {"c": by_api}
            )
        assert ledger == 1
