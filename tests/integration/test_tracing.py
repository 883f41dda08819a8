"""One trace from the POST to the webhook, recorded by OpenTelemetry's in-memory exporter: the
ingest (through ASGI), the classifier and the notifier run in this process on the real broker
and database; the trace id the POST sent is on every record it causes and on the webhook
request, and the spans of every service hang together in that trace. A batch of two
customers' events keeps each customer's work in its own event's trace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.access import api_key
from tests.integration.helpers import classifier_client, eventually
from tests.integration.test_ingest_api import running
from tests.notifier_support import WebhookReceiver, playbook_text, start_harness, write_playbook
from tests.support import read_topic
from tierflow_common import tracing
from tierflow_common.auth import Role
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)
from tierflow_common.trace_context import parse
from tierflow_ingest.bootstrap import create_app
from tierflow_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

POST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
POST_SPAN = "00f067aa0ba902b7"
OWN_TRACE = "0af7651916cd43dd8448eb211c80319c"
OWN_SPAN = "b7ad6b7169203331"
# A new customer's first purchase makes it `regular`: this rule then sends a webhook.
RULE = """  - id: trace-regular
    when: {dimension: value_tier, from: "*", to: regular}
    action: {kind: account_manager_assignment, priority: 1, owner: "queue:am", due_in: 2d}
"""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test", exporters=[exporter])
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


@pytest.fixture
async def pipeline(
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, WebhookReceiver]]:
    receiver = WebhookReceiver()
    key = await api_key(database, roles=[Role.INGEST])
    ingest_app = create_app(
        kafka=kafka_settings,
        database=database,
        topics=topics,
        settings=IngestSettings(keys_refresh_s=0.2),
    )
    async with AsyncExitStack() as stack:
        ingest = await stack.enter_async_context(asynccontextmanager(running)(ingest_app, key))
        await stack.enter_async_context(
            classifier_client(
                kafka_settings, database, topics, consumer=ConsumerSettings(max_batch=50)
            )
        )
        await start_harness(
            stack,
            kafka=kafka_settings,
            database=database,
            topics=topics,
            playbook=write_playbook(tmp_path / "care.yaml", playbook_text() + RULE),
            receivers={"crm": receiver},
        )
        yield ingest, receiver


def _purchase(customer: str, **extensions: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"{customer}-o1",
        "source": "shop",
        "type": "purchase",
        "subject": customer,
        "time": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "data": {"order_id": f"{customer}-o1", "amount": "20.00", "currency": "USD"},
        **extensions,
    }


def _trace_id(traceparent: bytes | str) -> str:
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return text.split("-")[1]


def _hex(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) as W3C hex."""
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


async def test_one_trace_from_the_post_to_the_webhook(
    spans: InMemorySpanExporter,
    pipeline: tuple[httpx.AsyncClient, WebhookReceiver],
    kafka_settings: KafkaSettings,
    topics: TopicSettings,
) -> None:
    ingest, receiver = pipeline
    # One batch, two customers: "own" carries its trace (CloudEvents extension), "plain"
    # takes the request's (the W3C traceparent header).
    resp = await ingest.post(
        "/v1/events:batch",
        json=[_purchase("own", traceparent=f"00-{OWN_TRACE}-{OWN_SPAN}-01"), _purchase("plain")],
        headers={
            "content-type": "application/cloudevents-batch+json",
            "traceparent": f"00-{POST_TRACE}-{POST_SPAN}-01",
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 2
    expected = {b"own": OWN_TRACE, b"plain": POST_TRACE}

    def webhooks() -> dict[str, str]:
        return {
            got[0].body["subject"]: got[0].headers.get("traceparent", "")
            for got in list(receiver.accepted.values())
            if got[0].body["data"]["rule_id"] == "trace-regular"
        }

    async def probe() -> dict[str, str]:
        return webhooks()

    sent = await eventually(probe, lambda w: len(w) == 2, timeout=60, what="both webhooks")
    assert {c: _trace_id(tp) for c, tp in sent.items()} == {"own": OWN_TRACE, "plain": POST_TRACE}

    # Every record the two events caused carries its customer's trace id.
    for topic, least in (
        (topics.customer_events, 2),
        (topics.classification_changed, 2),
        (topics.tier_changed, 2),
        (topics.care_actions, 2),
    ):
        records = await read_topic(kafka_settings, topic, expect=least)
        if topic == topics.care_actions:
            # The change's action; a first-purchase follow-up is the scheduler's, due later.
            records = [r for r in records if r["event"]["data"]["rule_id"] == "trace-regular"]
        seen = {r["key"]: _trace_id(r["headers"]["ce_traceparent"]) for r in records}
        assert seen == expected, topic

    # The spans of the plain customer's work: POST -> classify -> action -> webhook, each the
    # parent of the next, in the trace the POST sent.
    finished = spans.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    (post,) = by_name["POST /v1/events:batch"]
    assert post.kind is SpanKind.SERVER
    assert _hex(post)[0] == POST_TRACE
    assert _hex(post)[2] == POST_SPAN

    def in_trace(name: str, trace_id: str) -> ReadableSpan:
        (span,) = [s for s in by_name[name] if _hex(s)[0] == trace_id]
        return span

    classify = in_trace("classify customer", POST_TRACE)
    assert _hex(classify)[2] == _hex(post)[1]
    action = in_trace("notifier action", POST_TRACE)
    assert _hex(action)[2] == _hex(classify)[1]
    delivery = in_trace("webhook delivery", POST_TRACE)
    assert delivery.kind is SpanKind.CLIENT
    assert _hex(delivery)[2] == _hex(action)[1]
    assert _trace_id(sent["plain"]) == POST_TRACE
    assert sent["plain"].split("-")[2] == _hex(delivery)[1]  # the request's parent: the span

    # The other customer's work stays in its own event's trace, under the span it carried.
    own = in_trace("classify customer", OWN_TRACE)
    assert _hex(own)[2] == OWN_SPAN
    assert _hex(in_trace("webhook delivery", OWN_TRACE))[0] == OWN_TRACE
    # Both ran in a classifier batch span, which their links name.
    batches = {_hex(s)[1] for s in by_name["classifier batch"]}
    for span in (own, classify):
        assert {f"{link.context.span_id:016x}" for link in span.links} <= batches
        assert span.links


async def test_with_tracing_off_the_ingest_still_starts_or_keeps_the_trace(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    assert not tracing.enabled()
    key = await api_key(database, roles=[Role.INGEST])
    app = create_app(kafka=kafka_settings, database=database, topics=topics)
    async for ingest in running(app, key):
        structured = {"content-type": "application/cloudevents+json"}
        fresh = await ingest.post("/v1/events", json=_purchase("fresh"), headers=structured)
        assert fresh.status_code == 202, fresh.text
        event = _purchase("binary")
        data = event.pop("data")
        binary = await ingest.post(
            "/v1/events",
            json=data,
            headers={
                "content-type": "application/json",
                "ce-traceparent": f"00-{OWN_TRACE}-{OWN_SPAN}-01",
                **{f"ce-{k}": v for k, v in event.items()},
            },
        )
        assert binary.status_code == 202, binary.text
        bulk = await ingest.post(
            "/v1/events:bulk",
            content=orjson.dumps(_purchase("bulk")) + b"\n",
            headers={
                "content-type": "application/x-ndjson",
                "traceparent": f"00-{POST_TRACE}-{POST_SPAN}-01",
            },
        )
        assert bulk.status_code == 200, bulk.text
        assert bulk.json()["accepted"] == 1
    records = await read_topic(kafka_settings, topics.customer_events, expect=3)
    headers = {r["key"]: r["headers"] for r in records}
    # Binary mode's ce-traceparent is the event's: carried as it came.
    assert headers[b"binary"]["ce_traceparent"] == f"00-{OWN_TRACE}-{OWN_SPAN}-01".encode()
    # A bulk upload's lines take the request's traceparent header.
    assert headers[b"bulk"]["ce_traceparent"] == f"00-{POST_TRACE}-{POST_SPAN}-01".encode()
    # None given: a new trace, not sampled (no span was recorded), on the record.
    started = parse(headers[b"fresh"]["ce_traceparent"].decode())
    assert started is not None
    assert started.traceparent.endswith("-00")
