"""A real HTTP webhook receiver on 127.0.0.1 that verifies Standard Webhooks signatures, plus
helpers shared by the notifier's integration and end-to-end tests.

The receiver is a small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies):
enough for httpx, and fully controllable (answer 500, answer slowly, count per webhook-id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import threading
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.access import app_client
from tests.integration.helpers import eventually, produce, served
from tests.support import unique
from tierflow_common.contract import CLASSIFICATION_CHANGED_TYPE, EmittedEvent
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_notifier.bootstrap import create_app
from tierflow_notifier.settings import NotifierSettings


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class Received:
    webhook_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.time)  # wall clock, as the action's created_at
    raw: bytes = b""  # the body as sent (for CloudEvents SDKs reading the request)


@dataclass
class WebhookReceiver:
    """Answers `status` (after `delay` seconds) to every POST; records what it accepted.

    `accepted` holds 2xx-answered deliveries by webhook-id (a list, so duplicates show);
    POSTs to /v1/events are treated as the ingest API (Bearer `api_key` required).
    """

    secret: str = field(default_factory=new_secret)
    status: int = 200
    delay: float = 0.0
    api_key: str = "test-key"
    accepted: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    ingest_events: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    bad_signatures: int = 0
    _server: asyncio.Server | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, name: str) -> dict[str, str]:
        return {"name": name, "url": self.url, "secret": self.secret}

    def ids(self) -> set[str]:
        while True:  # the threaded receiver may add an entry while we copy
            try:
                return set(self.accepted)
            except RuntimeError:
                continue

    def duplicates(self) -> int:
        return sum(len(v) - 1 for v in list(self.accepted.values()))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = await self._handle(method, path, headers, body)
                await self._respond(writer, status)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, status: int) -> None:
        """Answer `status` (a subclass may answer otherwise, e.g. reset the connection)."""
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            "content-length: 2\r\n\r\n{}".encode()
        )
        await writer.drain()

    async def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        if method != "POST":
            return 405
        if path == "/v1/events":
            if headers.get("authorization") != f"Bearer {self.api_key}":
                return 401
            self.ingest_events.append(json.loads(body))
            return 202
        self.attempts += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            self.bad_signatures += 1
            return 401
        if 200 <= self.status < 300:
            wid = headers["webhook-id"]
            self.accepted[wid].append(Received(wid, payload, headers, raw=body))
        return self.status


class ThreadedReceiver:
    """The receiver on its own event loop in a thread, for tests whose main thread blocks
    (service processes started and polled synchronously)."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(10)
        return self.receiver

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def write_playbook(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def webhooks_env(*endpoints: dict[str, str]) -> str:
    return json.dumps(list(endpoints))


def playbook_text(
    *,
    quiet: tuple[str, str] | None = None,
    birthday_at: str = "09:00",
    cadence: str = "2s",
    first_purchase: str = "1s",
    supervisor: str = "1s",
    manager: str = "4s",
    churn_to: str = "high",
) -> str:
    """A playbook with every trigger kind and action type, on test-sized durations."""
    quiet_line = f'  quiet_hours: {{start: "{quiet[0]}", end: "{quiet[1]}"}}\n' if quiet else ""
    return f"""playbook_version: "test"
contact_policy:
  default_timezone: UTC
{quiet_line}  caps:
    - {{id: coupon-per-30d, kinds: [coupon], max: 1, per: 30d}}
    - {{id: messages-per-week, kinds: [care_message, coupon], max: 3, per: 7d}}
rules:
  - id: vip-account-manager
    when: {{dimension: value_tier, from: "*", to: VIP}}
    action: {{kind: account_manager_assignment, priority: 1, owner: "queue:am", due_in: 2d}}
  - id: downgrade-revisit
    when: {{dimension: value_tier, from: VIP, to: "*"}}
    action: {{kind: revisit, priority: 1, owner: "queue:care", due_in: 3d}}
  - id: at-risk-coupon
    when: {{dimension: lifecycle, from: "*", to: at_risk}}
    action:
      kind: coupon
      priority: 2
      coupon: {{value_by_tier: {{VIP: "50.00", "*": "10.00"}}, currency: USD, expires_in: 30d}}
  - id: churn-care-message
    when: {{dimension: churn_risk, from: "*", to: "{churn_to}"}}
    action: {{kind: care_message, priority: 3, channel: preferred, fallback_channels: [email],
             template: we-care}}
  - id: problem-escalation
    when: {{dimension: problem, from: "*", to: escalated}}
    action: {{kind: escalation, priority: 0, owner: "role:supervisor", due_in: 24h}}
  - id: vip-cadence-revisit
    when: {{cadence: {{dimension: value_tier, label: VIP, every: {cadence}}}}}
    action: {{kind: revisit, priority: 2, owner: "queue:am"}}
  - id: first-purchase-follow-up
    when: {{first_purchase: {{after: {first_purchase}}}}}
    action: {{kind: follow_up, priority: 3, owner: "queue:care"}}
  - id: birthday-care
    when: {{birthday: {{at: "{birthday_at}"}}}}
    action: {{kind: care_message, priority: 4, template: birthday}}
  - id: complaint-supervisor
    when: {{complaint_unresolved: {{after: {supervisor}}}}}
    action: {{kind: escalation, priority: 0, owner: "role:supervisor", due_in: 4h}}
  - id: complaint-manager
    when: {{complaint_unresolved: {{after: {manager}}}}}
    action: {{kind: escalation, priority: 0, owner: "role:manager", due_in: 4h}}
"""


def change_event(
    event_id: str,
    customer: str,
    dimension: str,
    from_label: str | None,
    to_label: str,
    *,
    at: datetime | None = None,
) -> EmittedEvent:
    at = at or datetime.now(UTC)
    return EmittedEvent(
        id=event_id,
        type=CLASSIFICATION_CHANGED_TYPE,
        source="tierflow/classifier",
        subject=customer,
        time=at,
        data={
            "customer_id": customer,
            "dimension": dimension,
            "from": from_label,
            "to": to_label,
            "reason": f"test {dimension}",
            "explanation": {"rule": "test"},
            "cause": "event:shop/1",
            "effective_at": at.isoformat(),
            "rule_set_version": "t",
        },
    )


def customer_event(
    event_id: str, customer: str, type_: str, data: dict[str, Any], *, at: datetime | None = None
) -> EmittedEvent:
    return EmittedEvent(
        id=event_id,
        type=type_,
        source="crm",
        subject=customer,
        time=at or datetime.now(UTC),
        data=data,
    )


@dataclass
class Harness:
    """One in-process notifier on the real broker and database, with its receivers."""

    client: httpx.AsyncClient
    engine: AsyncEngine
    kafka: KafkaSettings
    topics: TopicSettings
    receivers: dict[str, WebhookReceiver]
    app: FastAPI | None = None

    async def serve_http(self, stack: AsyncExitStack) -> str:
        """Also serve the (already started) app on a real port, e.g. for the `tierflow` CLI."""
        assert self.app is not None
        return await stack.enter_async_context(served(self.app))

    async def rows(self, where: str = "TRUE", **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text(f"SELECT * FROM care_actions WHERE {where}"), params)
            return [dict(r._mapping) for r in result]

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(text(sql), params)

    async def changes(self, events: list[EmittedEvent]) -> None:
        await produce(self.kafka, self.topics.classification_changed, list(events))

    async def customer_events(self, events: list[EmittedEvent]) -> None:
        await produce(self.kafka, self.topics.customer_events, list(events))


TEST_DELIVERY = {
    "delivery_poll_s": 0.1,
    "delivery_backoff_base_s": 0.05,
    "delivery_backoff_max_s": 0.2,
    "delivery_max_attempts": 3,
    "delivery_timeout_s": 5.0,
    "breaker_failures": 3,
    "breaker_cooldown_s": 0.2,
    "scheduler_max_sleep_s": 0.2,
}


async def start_harness(
    stack: AsyncExitStack,
    *,
    kafka: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    playbook: Path,
    receivers: dict[str, WebhookReceiver],
    ingest: WebhookReceiver | None = None,
    **overrides: Any,
) -> Harness:
    for receiver in {
        id(r): r for r in [*receivers.values(), *([ingest] if ingest else [])]
    }.values():
        if not receiver.port:
            await receiver.start()
            stack.push_async_callback(receiver.stop)
    settings = NotifierSettings.model_validate(
        {
            "playbooks_file": playbook,
            "group_id": unique("notifier"),
            "events_group_id": unique("notifier_events"),
            "webhooks": [r.endpoint(name) for name, r in receivers.items()],
            "ingest_url": ingest.base_url if ingest else None,
            "ingest_api_key": ingest.api_key if ingest else None,
            **TEST_DELIVERY,
            **overrides,
        }
    )
    app = create_app(kafka=kafka, database=database, topics=topics, settings=settings)
    client = await stack.enter_async_context(app_client(app, database, base_url="http://notifier"))
    engine = create_engine(database)
    stack.push_async_callback(engine.dispose)
    harness = Harness(client, engine, kafka, topics, receivers, app)
    await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=30)
    return harness
