"""No personal data in logs: the three services handle events full of distinctive personal
data — valid ones, ones the ingest rejects, and poison records written straight to the topic,
which the consumers dead-letter — and none of those values appears in any log line they
wrote. Customer ids may appear (and do: the test checks the logs are not simply empty)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.conftest import Pipeline
from tests.integration.helpers import produce
from tests.support import read_to_end
from tierflow_common.contract.kafka_binding import binary_headers

pytestmark = pytest.mark.e2e

CUSTOMER = "pii-customer-1"
# Values no log line has any other reason to contain.
PERSONAL = {
    "name": "Zebulon Quaxworth",
    "email": "zebulon.quaxworth@mail-pii.example",
    "phone": "+31 6 4471 9020",
    "birthday": "1977-03-29",
    "city": "Quaxbridge-on-Sea",
    "province": "Quaxshire",
    "industry": "artisanal quaxery",
    "tag": "quax-vip-tag",
    "note": "left the parcel with the neighbour at number 17b",
    "comment": "the courier was rude to my grandmother",
    "reason": "arrived soaked through in the rainstorm",
    # Rejected, so never stored, but once in a request or on the topic.
    "bad_email": "zebulon.at.quaxworth-mail-pii",
    "bad_zone": "Mars/Olympus_Quaxworth",
    "bad_phone": "call-me-quax-0177",
    "poison_name": "Ysolde Marrowgrave",
    "poison_zone": "Venus/Ishtar_Marrowgrave",
    "poison_email": "ysolde@marrowgrave",
    "broken_json": "Ysolde Marrowgrave broke the json",
}


def event(type_: str, n: int, data: dict[str, Any], subject: str = CUSTOMER) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"pii-{type_}-{n}",
        "source": "crm",
        "type": type_,
        "subject": subject,
        "time": (datetime.now(UTC) - timedelta(minutes=10 - n)).isoformat(),
        "data": data,
    }


def poison(n: int, data: bytes, type_: str = "profile") -> tuple[bytes, bytes, list[Any]]:
    headers = binary_headers(
        id=f"pii-poison-{n}",
        type=type_,
        source="crm",
        subject=CUSTOMER,
        time=datetime.now(UTC) - timedelta(minutes=1),
    )
    return (CUSTOMER.encode(), data, headers)


async def test_personal_data_never_reaches_a_log_line(pipeline: Pipeline) -> None:
    good = [
        event("purchase", 1, {"order_id": "o-1", "amount": "80.00", "currency": "USD"}),
        event(
            "profile",
            2,
            {
                "name": PERSONAL["name"],
                "contacts": {"email": PERSONAL["email"], "phone": PERSONAL["phone"]},
                "region": {
                    "country": "NL",
                    "province": PERSONAL["province"],
                    "city": PERSONAL["city"],
                },
                "industry": PERSONAL["industry"],
                "birthday": PERSONAL["birthday"],
                "timezone": "Europe/Amsterdam",
                "tags": [PERSONAL["tag"]],
                "consent": {"marketing": True, "channels": {"email": True}},
            },
        ),
        event(
            "interaction",
            3,
            {"kind": "complaint", "complaint_id": "T-1", "note": PERSONAL["note"]},
        ),
        event("feedback", 4, {"satisfaction": 1, "comment": PERSONAL["comment"]}),
        event(
            "refund",
            5,
            {"order_id": "o-1", "amount": "10.00", "currency": "USD", "reason": PERSONAL["reason"]},
        ),
    ]
    rejected = [
        event("profile", 6, {"contacts": {"email": PERSONAL["bad_email"]}}),
        event("profile", 7, {"timezone": PERSONAL["bad_zone"], "name": PERSONAL["name"]}),
        event("profile", 8, {"contacts": {"phone": PERSONAL["bad_phone"]}}),
        event("profile", 9, {"birthday": "2999-01-01", "name": PERSONAL["name"]}),
    ]
    async with httpx.AsyncClient(timeout=10, headers=pipeline.auth) as client:
        for e in good:
            resp = await client.post(
                f"{pipeline.ingest.url}/v1/events",
                json=e,
                headers={"content-type": "application/cloudevents+json"},
            )
            assert resp.status_code == 202, resp.text
        for e in rejected:
            resp = await client.post(
                f"{pipeline.ingest.url}/v1/events",
                json=e,
                headers={"content-type": "application/cloudevents+json"},
            )
            assert resp.status_code == 422, resp.text
        batch = await client.post(
            f"{pipeline.ingest.url}/v1/events:batch",
            json=[good[0], *rejected],
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        assert batch.status_code in (200, 207), batch.text

        # Past the ingest's validation: what another producer could write to the topic.
        await produce(
            pipeline.kafka,
            pipeline.topics.customer_events,
            [
                poison(
                    1,
                    orjson.dumps(
                        {"name": PERSONAL["poison_name"], "timezone": PERSONAL["poison_zone"]}
                    ),
                ),
                poison(2, orjson.dumps({"contacts": {"email": PERSONAL["poison_email"]}})),
                poison(3, b'{"name": "' + PERSONAL["broken_json"].encode()),
                poison(4, orjson.dumps({"note": PERSONAL["note"]}), type_="interaction"),
            ],
        )

        # Everything handled: the profile is applied, the complaint made a care action, and
        # the classifier dead-lettered the four poison records.
        deadline = time.monotonic() + 30
        profile: dict[str, Any] = {}
        while time.monotonic() < deadline and profile.get("name") != PERSONAL["name"]:
            got = await client.get(f"{pipeline.classifier.url}/v1/customers/{CUSTOMER}")
            if got.status_code == 200:
                profile = got.json().get("profile") or {}
            await asyncio.sleep(0.1)
        assert profile.get("name") == PERSONAL["name"], "profile not applied in 30 s"
        actions: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not actions:
            listed = await client.get(
                f"{pipeline.notifier.url}/v1/actions", params={"customer": CUSTOMER}
            )
            actions = listed.json()["items"]
            await asyncio.sleep(0.1)
        assert actions, "no care action for the complaint in 30 s"
    dead: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(dead) < 4:
        dead = await read_to_end(pipeline.kafka, pipeline.topics.classifier_dlq)
        await asyncio.sleep(0.1)
    assert len(dead) == 4, "the poison records were not all dead-lettered in 30 s"

    logs = {
        svc.name: svc.log() for svc in (pipeline.ingest, pipeline.classifier, pipeline.notifier)
    }
    # The logs say what happened (by customer id, offsets, fields and reasons)...
    assert "dead_lettered" in logs["classifier"]
    assert all(line.strip() for line in logs.values())
    # ... and never whom it happened to.
    leaks = [
        f"{service}: {what} ({value!r}) in: {line.strip()[:300]}"
        for service, text in logs.items()
        for line in text.splitlines()
        for what, value in PERSONAL.items()
        if value.lower() in line.lower()
    ]
    assert leaks == []
