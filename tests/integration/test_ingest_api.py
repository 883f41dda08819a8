"""The ingest API against the real broker: 202 only after the ack, exact 4xx errors, and 503
(never 202) when the broker is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI

from tests.integration.helpers import eventually
from tests.support import read_topic
from tests.unit.test_contract import purchase
from tierflow_common.db.engine import create_engine
from tierflow_common.embedded import EmbeddedTansu, free_port
from tierflow_common.kafka import ensure_topics
from tierflow_common.keys import create_key, revoke_key
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_ingest.bootstrap import create_app
from tierflow_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration
CE = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}
NDJSON = {"content-type": "application/x-ndjson"}


async def running(app: FastAPI, key: str = "") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ingest", headers=headers
        ) as client:
            await eventually(
                lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=30
            )
            yield client


@pytest.fixture
async def shop_key(database: DatabaseSettings) -> str:
    """A key that may send for the sources 'shop' and 'pos' only."""
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            _, key = await create_key(conn, name="shop test", sources=["shop", "pos"])
    finally:
        await engine.dispose()
    return key


@pytest.fixture
async def ingest(
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    shop_key: str,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        # The sample events are dated 2025: keep their receipts (a window of 10 years).
        settings=IngestSettings(
            max_body_bytes=64 * 1024, keys_refresh_s=0.2, receipt_retention_days=3650
        ),
    )
    async for client in running(app, shop_key):
        yield client


async def test_accepted_event_is_on_the_topic_in_cloudevents_binary_mode(
    ingest: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    resp = await ingest.post("/v1/events", content=orjson.dumps(purchase()), headers=CE)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {
        "status": "accepted",
        "id": "order-1",
        "source": "shop",
        "duplicate": False,
    }
    (record,) = await read_topic(kafka_settings, topics.customer_events, expect=1)
    assert record["key"] == b"c-1"
    assert record["headers"]["ce_id"] == b"order-1"
    assert record["headers"]["ce_source"] == b"shop"
    assert record["headers"]["ce_type"] == b"purchase"
    assert record["headers"]["ce_subject"] == b"c-1"
    assert orjson.loads(record["value"]) == {"order_id": "1", "amount": "129.90", "currency": "USD"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "slug"),
    [
        (b'{"specversion": "1.0",', CE, 400, "malformed-json"),
        (orjson.dumps(purchase()), {"content-type": "text/plain"}, 415, "unsupported-media-type"),
        (b"[" + b" " * 70_000 + b"]", CE, 413, "payload-too-large"),
        (orjson.dumps(purchase(type="refundz")), CE, 422, "invalid-event"),
    ],
)
async def test_bad_requests_get_a_problem_document(
    ingest: httpx.AsyncClient, body: bytes, headers: dict[str, str], status: int, slug: str
) -> None:
    resp = await ingest.post("/v1/events", content=body, headers=headers)
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["type"].endswith(slug)
    assert problem["status"] == status
    assert problem["detail"]


async def test_invalid_event_lists_each_field(ingest: httpx.AsyncClient) -> None:
    bad = purchase(subject="", data={"order_id": "1", "amount": "-3", "currency": "USD"})
    resp = await ingest.post("/v1/events", content=orjson.dumps(bad), headers=CE)
    assert resp.status_code == 422
    fields = {e["field"]: e["code"] for e in resp.json()["errors"]}
    assert fields == {"subject": "string_too_short", "data.amount": "greater_than_equal"}


async def test_batch_accepts_valid_items_and_rejects_the_rest_by_index(
    ingest: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    items = [
        purchase(id="b-1"),
        purchase(id="b-2", data={"order_id": "2", "amount": "oops", "currency": "USD"}),
        purchase(id="b-3", subject="c-3"),
    ]
    resp = await ingest.post("/v1/events:batch", content=orjson.dumps(items), headers=BATCH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["accepted"], body["rejected"], body["failed"], body["duplicates"]) == (2, 1, 0, 0)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    assert body["results"][1]["errors"][0]["field"] == "data.amount"
    records = await read_topic(kafka_settings, topics.customer_events, expect=2)
    assert sorted(r["headers"]["ce_id"] for r in records) == [b"b-1", b"b-3"]


async def test_batch_over_the_limit_is_413(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings, shop_key: str
) -> None:
    app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=IngestSettings(max_batch_events=2),
    )
    async for client in running(app, shop_key):
        items = [purchase(id=f"x-{i}") for i in range(3)]
        resp = await client.post("/v1/events:batch", content=orjson.dumps(items), headers=BATCH)
        assert resp.status_code == 413
        assert "limit is 2" in resp.json()["detail"]


async def test_broker_gone_turns_202_into_503_with_retry_after(
    tmp_path: Path, database: DatabaseSettings, shop_key: str
) -> None:
    broker = EmbeddedTansu(port=free_port(), log_file=tmp_path / "tansu.log")
    broker.start()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=2_000)
    topics = TopicSettings(partitions=1)
    await ensure_topics(kafka, topics)
    app = create_app(
        kafka=kafka, database=database, topics=topics, settings=IngestSettings(publish_timeout_s=2)
    )
    try:
        async for client in running(app, shop_key):
            ok = await client.post("/v1/events", content=orjson.dumps(purchase()), headers=CE)
            assert ok.status_code == 202
            # What was acknowledged is on the log before the broker goes away.
            (stored,) = await read_topic(kafka, topics.customer_events, expect=1)
            assert stored["headers"]["ce_id"] == b"order-1"
            broker.stop()
            resp = await client.post(
                "/v1/events", content=orjson.dumps(purchase(id="after-stop")), headers=CE
            )
            assert resp.status_code == 503
            assert resp.headers["retry-after"] == "5"
            assert resp.json()["type"].endswith("broker-unavailable")
            batch = await client.post(
                "/v1/events:batch",
                content=orjson.dumps([purchase(id="b-after"), purchase(id="b-bad", subject="")]),
                headers=BATCH,
            )
            assert batch.status_code == 503
            assert batch.headers["retry-after"] == "5"
            bulk = await client.post(
                "/v1/events:bulk",
                content=b"\n".join(orjson.dumps(purchase(id=f"n-{i}")) for i in range(3)),
                headers=NDJSON,
            )
            assert bulk.status_code == 503
            assert bulk.json()["accepted"] == 0
            assert bulk.json()["resend_from_line"] == 1
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["broker"].startswith("fail")
    finally:
        broker.stop()


async def test_resent_event_is_accepted_and_reported_as_duplicate(
    ingest: httpx.AsyncClient,
) -> None:
    body = orjson.dumps(purchase(id="dup-1"))
    first = await ingest.post("/v1/events", content=body, headers=CE)
    again = [await ingest.post("/v1/events", content=body, headers=CE) for _ in range(3)]
    assert first.json()["duplicate"] is False
    assert [r.status_code for r in again] == [202, 202, 202]
    assert [r.json()["duplicate"] for r in again] == [True, True, True]
    batch = await ingest.post(
        "/v1/events:batch",
        content=orjson.dumps([purchase(id="dup-1"), purchase(id="dup-2"), purchase(id="dup-2")]),
        headers=BATCH,
    )
    assert [r["duplicate"] for r in batch.json()["results"]] == [True, False, True]
    assert batch.json()["duplicates"] == 2


async def test_missing_or_unknown_key_is_401(ingest: httpx.AsyncClient) -> None:
    body = orjson.dumps(purchase())
    anonymous = await ingest.post("/v1/events", content=body, headers={**CE, "authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = await ingest.post(
        "/v1/events", content=body, headers={**CE, "authorization": "Bearer tf_nope_nope"}
    )
    assert wrong.status_code == 401
    assert wrong.json()["title"] == "Invalid API key"


async def test_key_may_only_send_its_own_sources(ingest: httpx.AsyncClient) -> None:
    resp = await ingest.post("/v1/events", content=orjson.dumps(purchase(source="erp")), headers=CE)
    assert resp.status_code == 403
    assert resp.json()["errors"] == [
        {"field": "source", "code": "forbidden_source", "reason": resp.json()["detail"]}
    ]
    batch = await ingest.post(
        "/v1/events:batch",
        content=orjson.dumps([purchase(source="erp", id="e-1"), purchase(source="pos", id="p-1")]),
        headers=BATCH,
    )
    assert [r["status"] for r in batch.json()["results"]] == ["rejected", "accepted"]
    assert batch.json()["results"][0]["errors"][0]["code"] == "forbidden_source"


async def test_revoked_key_stops_working(
    ingest: httpx.AsyncClient, database: DatabaseSettings, shop_key: str
) -> None:
    key_id = shop_key.split("_")[1]
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            assert await revoke_key(conn, key_id)
    finally:
        await engine.dispose()
    await eventually(
        lambda: ingest.post("/v1/events", content=orjson.dumps(purchase()), headers=CE),
        lambda r: r.status_code == 401,
        timeout=5,
    )


async def test_client_over_its_rate_limit_gets_429_with_retry_after(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings, shop_key: str
) -> None:
    app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=IngestSettings(rate_limit_events_per_s=1, rate_limit_burst=2),
    )
    async for client in running(app, shop_key):
        codes = [
            (
                await client.post(
                    "/v1/events", content=orjson.dumps(purchase(id=f"r-{i}")), headers=CE
                )
            ).status_code
            for i in range(3)
        ]
        assert codes == [202, 202, 429]
        limited = await client.post(
            "/v1/events", content=orjson.dumps(purchase(id="r-9")), headers=CE
        )
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1


async def test_bulk_ndjson_counts_every_line_and_reports_errors_by_line(
    ingest: httpx.AsyncClient, kafka_settings: KafkaSettings, topics: TopicSettings
) -> None:
    lines = [
        orjson.dumps(purchase(id="l-1")),
        b"",
        b"{not json",
        orjson.dumps(purchase(id="l-4", data={"order_id": "4", "amount": "-1", "currency": "USD"})),
        orjson.dumps(purchase(id="l-5", source="erp")),
        orjson.dumps(purchase(id="l-1")),
        orjson.dumps(purchase(id="l-7")),
    ]
    resp = await ingest.post("/v1/events:bulk", content=b"\n".join(lines), headers=NDJSON)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["lines"], body["accepted"], body["duplicates"], body["rejected"]) == (7, 3, 1, 3)
    assert [(e["line"], e["errors"][0]["code"]) for e in body["errors"]] == [
        (3, "malformed_json"),
        (4, "greater_than_equal"),
        (5, "forbidden_source"),
    ]
    assert body["errors"][1]["errors"][0]["field"] == "data.amount"
    records = await read_topic(kafka_settings, topics.customer_events, expect=3)
    assert sorted(r["headers"]["ce_id"] for r in records) == [b"l-1", b"l-1", b"l-7"]


async def test_bulk_wrong_content_type_is_415(ingest: httpx.AsyncClient) -> None:
    resp = await ingest.post("/v1/events:bulk", content=b"{}", headers=CE)
    assert resp.status_code == 415
