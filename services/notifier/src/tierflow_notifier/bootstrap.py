"""Wires the notifier: playbooks, two consumers (classification changes; customer events for
the contact projection), scheduler, outbox relay, one delivery worker per endpoint, API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.audit import AuditLog
from tierflow_common.auth import install_auth
from tierflow_common.checks import broker_check, database_check
from tierflow_common.consumer import StatefulConsumer
from tierflow_common.db.engine import create_engine
from tierflow_common.db.pruning import Pruner
from tierflow_common.errors_http import install_database_error_handler
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.health import ops_router
from tierflow_common.keys import KeyCache
from tierflow_common.logging import configure_logging
from tierflow_common.outbox import OutboxRelay
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    TopicSettings,
)
from tierflow_common.tasks import finish
from tierflow_common.tracing import configure_tracing
from tierflow_notifier.adapters.http import HttpClient
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.adapters.retention import retention_rules
from tierflow_notifier.adapters.webhooks import IngestRequests, WebhookRequests
from tierflow_notifier.domain.delivery import CircuitBreaker
from tierflow_notifier.entrypoints.api import build_router, install_error_handlers
from tierflow_notifier.service_layer.actions import ActionWriter
from tierflow_notifier.service_layer.delivery import EndpointWorker, RequestBuilder, RetryPolicy
from tierflow_notifier.service_layer.events import EventsHandler
from tierflow_notifier.service_layer.handler import NotifierHandler
from tierflow_notifier.service_layer.scheduler import Scheduler
from tierflow_notifier.settings import INGEST_ENDPOINT, NotifierSettings

PRODUCER_NAME = "notifier"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _workers(
    settings: NotifierSettings, engine: AsyncEngine, clock: Callable[[], datetime]
) -> tuple[list[EndpointWorker], list[HttpClient]]:
    policy = RetryPolicy(
        max_attempts=settings.delivery_max_attempts,
        base_s=settings.delivery_backoff_base_s,
        max_s=settings.delivery_backoff_max_s,
        lease_s=settings.delivery_lease_s,
        poll_s=settings.delivery_poll_s,
        concurrency=settings.delivery_concurrency,
        batch=settings.delivery_batch,
        timeout_s=settings.delivery_timeout_s,
    )
    targets: list[tuple[str, RequestBuilder]] = [
        (w.name, WebhookRequests(w)) for w in settings.webhooks
    ]
    if settings.ingest_url:
        key = settings.ingest_api_key.get_secret_value() if settings.ingest_api_key else None
        targets.append((INGEST_ENDPOINT, IngestRequests(settings.ingest_url, key)))
    workers: list[EndpointWorker] = []
    clients: list[HttpClient] = []
    for name, build in targets:
        # One client per endpoint: its connections cannot be taken by another endpoint.
        client = HttpClient(
            build.url,
            max_connections=settings.delivery_concurrency,
            timeout=settings.delivery_timeout_s,
        )
        clients.append(client)
        breaker = CircuitBreaker(
            threshold=settings.breaker_failures,
            cooldown=settings.breaker_cooldown_s,
            clock=time.monotonic,
        )
        workers.append(
            EndpointWorker(
                name=name,
                engine=engine,
                build=build,
                client=client,
                policy=policy,
                breaker=breaker,
                clock=clock,
            )
        )
    return workers, clients


def create_app(
    *,
    kafka: KafkaSettings | None = None,
    database: DatabaseSettings | None = None,
    topics: TopicSettings | None = None,
    consumer: ConsumerSettings | None = None,
    settings: NotifierSettings | None = None,
    clock: Callable[[], datetime] = utc_now,
    metrics: MetricsSettings | None = None,
) -> FastAPI:
    kafka = kafka or KafkaSettings()
    database = database or DatabaseSettings()
    topics = topics or TopicSettings()
    consumer_settings = consumer or ConsumerSettings()
    settings = settings or NotifierSettings()
    playbook = load_playbook(settings.playbooks_file)  # fails start-up with file:line if invalid
    # Fails start-up if the contact ledger would be kept shorter than a cap counts back.
    pruning_rules = retention_rules(settings, playbook)
    engine = create_engine(database)
    pruner = Pruner(
        engine, pruning_rules, batch=settings.prune_batch, interval_s=settings.prune_interval_s
    )
    keys = KeyCache(engine, refresh_s=settings.keys_refresh_s)
    relay = OutboxRelay(
        engine,
        kafka,
        producer=PRODUCER_NAME,
        batch=consumer_settings.outbox_batch,
        poll_interval=consumer_settings.outbox_poll_ms / 1000,
    )
    workers, clients = _workers(settings, engine, clock)
    by_name = {w.name: w for w in workers}
    writer = ActionWriter(
        playbook=playbook,
        care_actions_topic=topics.care_actions,
        endpoints=[w.name for w in settings.webhooks],
    )
    scheduler = Scheduler(
        engine=engine,
        playbook=playbook,
        writer=writer,
        producer_name=PRODUCER_NAME,
        clock=clock,
        batch=settings.scheduler_batch,
        max_sleep=settings.scheduler_max_sleep_s,
        on_committed=lambda: _wake_all(relay, workers),
    )
    changes = NotifierHandler(playbook=playbook, writer=writer, clock=clock)
    events = EventsHandler(playbook=playbook, clock=clock)

    # Wake only who has work from the committed batch: most batches leave none.
    def changes_committed() -> None:
        changes.tally.publish()
        scheduler.wake_for(changes.earliest_due)
        if changes.enqueued:
            relay.wake()
        if changes.delivering:
            for w in workers:
                w.wake()

    def events_committed() -> None:
        scheduler.wake_for(events.earliest_due)

    change_consumer = StatefulConsumer(
        engine=engine,
        kafka=kafka,
        settings=consumer_settings,
        group_id=settings.group_id,
        topics=[topics.classification_changed],
        dlq_topic=topics.notifier_dlq,
        producer_name=PRODUCER_NAME,
        handler=changes,
        on_committed=changes_committed,
    )
    # Its own group: the contact projection advances independently of the change stream. The
    # classifier dead-letters invalid customer events, so this handler never does; only an
    # unexpected error could send a record to the notifier's dead-letter topic.
    event_consumer = StatefulConsumer(
        engine=engine,
        kafka=kafka,
        settings=consumer_settings,
        group_id=settings.events_group_id,
        topics=[topics.customer_events],
        dlq_topic=topics.notifier_dlq,
        producer_name=PRODUCER_NAME,
        handler=events,
        on_committed=events_committed,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await keys.first_load()
        keys_task = asyncio.create_task(keys.run())
        consumers = [
            asyncio.create_task(change_consumer.run()),
            asyncio.create_task(event_consumer.run()),
        ]
        sched = asyncio.create_task(scheduler.run())
        senders = [asyncio.create_task(w.run()) for w in workers]
        relay_task = asyncio.create_task(relay.run())
        pruning = asyncio.create_task(pruner.run())
        try:
            yield
        finally:
            # Inputs first (each commits or abandons its batch), then the scheduler, then the
            # senders finish their in-flight requests, then the relay drains the outbox.
            change_consumer.stop()
            event_consumer.stop()
            for task in consumers:
                await finish(task, timeout=15)
            scheduler.stop()
            await finish(sched, timeout=15)
            for w in workers:
                w.stop()
            for task in senders:
                await finish(task, timeout=settings.delivery_timeout_s + 5)
            for client in clients:
                await client.aclose()
            relay.stop()
            await finish(relay_task, timeout=15)
            keys_task.cancel()
            await finish(keys_task, timeout=1)
            pruner.stop()
            await finish(pruning, timeout=15)
            await engine.dispose()

    async def broker_ready() -> None:
        producer = relay.kafka_producer
        if producer is None:
            raise BrokerUnavailable("producer not connected")
        await broker_check(producer)()

    async def partitions_ready() -> None:
        if not (change_consumer.ready and event_consumer.ready):
            raise BrokerUnavailable("no partitions assigned yet")

    def wake(endpoint: str) -> None:
        worker = by_name.get(endpoint)
        if worker is not None:
            worker.wake()

    app = FastAPI(
        title="tierflow notifier",
        version="1.0.0",
        description="Turns classification changes and schedules into care actions, delivers "
        "them by signed webhooks and the care-actions topic, and tracks them until done.",
        lifespan=lifespan,
    )
    app.include_router(
        build_router(engine, clock=clock, report_to_ingest=bool(settings.ingest_url), wake=wake)
    )
    install_error_handlers(app)
    install_database_error_handler(app)
    install_auth(app, keys, audit=AuditLog(engine, service="notifier"))
    app.include_router(
        ops_router(
            {
                "database": database_check(engine),
                "broker": broker_ready,
                "partitions": partitions_ready,
                "api_keys": keys.ready,
            },
            metrics_access=(metrics or MetricsSettings()).access,
        )
    )
    return app


def _wake_all(relay: OutboxRelay, workers: list[EndpointWorker]) -> None:
    relay.wake()
    for w in workers:
        w.wake()


def main() -> None:
    from tierflow_common.serve import serve  # noqa: PLC0415
    from tierflow_common.settings import NotifierHttpSettings  # noqa: PLC0415

    configure_logging(LogSettings(), service="notifier")
    configure_tracing("notifier")  # off unless OTEL_* configures an exporter
    serve(create_app(), NotifierHttpSettings())
