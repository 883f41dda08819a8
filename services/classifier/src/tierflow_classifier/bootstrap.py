"""Wires the classifier: rules, engine, consumer, outbox relay, read API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import structlog
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_classifier.adapters import churn_store
from tierflow_classifier.adapters.churn_store import ChurnModelHolder, model_loop
from tierflow_classifier.adapters.clock import Clock, FitSchedule, RefreshPolicy, make_clock
from tierflow_classifier.adapters.event_publisher import EventPublisher
from tierflow_classifier.adapters.leadership import Leadership
from tierflow_classifier.adapters.population_store import PopulationHolder
from tierflow_classifier.adapters.repository import processed_events_ledger
from tierflow_classifier.adapters.retention import retention_rules
from tierflow_classifier.adapters.rules_file import parse_rules, rule_set_candidate
from tierflow_classifier.domain.classify import rule_set_churn_config
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.entrypoints.api import build_router
from tierflow_classifier.entrypoints.audit_api import build_audit_router
from tierflow_classifier.entrypoints.customers_api import build_customers_router
from tierflow_classifier.entrypoints.erasure_api import build_erasure_router
from tierflow_classifier.entrypoints.rules_api import build_rules_router
from tierflow_classifier.service_layer.distribution_snapshots import DistributionSnapshots
from tierflow_classifier.service_layer.handler import ClassifierHandler
from tierflow_classifier.service_layer.population_refresh import PopulationRefresher
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.rule_sets import RuleSetFollower, seed
from tierflow_classifier.service_layer.scheduler import ReviewScheduler
from tierflow_classifier.service_layer.unit_of_work import PRODUCER_NAME, SqlUnitOfWork, UnitOfWork
from tierflow_classifier.settings import ClassifierSettings
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

log = structlog.get_logger(__name__)


@dataclass
class Wiring:
    """The classifier's use cases wired to their ports: the consumer's handler, the review
    scheduler and the population refresher, over one classifier (rule set, population, churn
    model) and one clock. Tests wire them to fakes (tests/fakes.py) the same way."""

    classifier: Classifier
    clock: Clock
    handler: ClassifierHandler
    scheduler: ReviewScheduler
    refresher: PopulationRefresher
    # Keeps the process on the rule-set activation in force.
    rule_sets: RuleSetFollower
    # Which classifier process rebuilds the population and fits the churn model.
    leadership: Leadership


def wire(
    *,
    rules: RuleSet,
    clock: Clock,
    topics: TopicSettings,
    settings: ClassifierSettings,
    unit_of_work: Callable[[], UnitOfWork],
    joining: Callable[[AsyncConnection], UnitOfWork],
    engine: AsyncEngine,
    on_committed: Callable[[], None] | None = None,
) -> Wiring:
    classifier = Classifier(rules, PopulationHolder(), ChurnModelHolder())
    leadership = Leadership(engine)
    return Wiring(
        rule_sets=RuleSetFollower(
            unit_of_work, classifier, parse_rules, poll_s=settings.rules_poll_s
        ),
        classifier=classifier,
        clock=clock,
        handler=ClassifierHandler(classifier, topics, clock, unit_of_work=joining),
        scheduler=ReviewScheduler(
            unit_of_work,
            classifier=classifier,
            topics=topics,
            clock=clock,
            on_committed=on_committed,
            batch=settings.review_batch,
            reevaluate_batch=settings.reevaluate_batch,
            reevaluate_per_s=settings.reevaluate_per_s,
            poll_s=settings.review_poll_s,
        ),
        refresher=PopulationRefresher(
            engine,
            unit_of_work,
            classifier,
            clock,
            topics,
            RefreshPolicy(
                every=timedelta(seconds=settings.population_refresh_s),
                step=timedelta(days=settings.population_refresh_event_days),
                settle_s=settings.population_settle_s,
            ),
            on_committed=on_committed,
            poll_s=settings.population_poll_s,
            sweep_batch=settings.population_sweep_batch,
            leadership=leadership,
            follow_grace_s=2 * settings.population_poll_s,
        ),
        leadership=leadership,
    )


def create_app(
    *,
    kafka: KafkaSettings | None = None,
    database: DatabaseSettings | None = None,
    topics: TopicSettings | None = None,
    consumer: ConsumerSettings | None = None,
    settings: ClassifierSettings | None = None,
    metrics: MetricsSettings | None = None,
) -> FastAPI:
    kafka = kafka or KafkaSettings()
    database = database or DatabaseSettings()
    topics = topics or TopicSettings()
    consumer_settings = consumer or ConsumerSettings()
    settings = settings or ClassifierSettings()
    # The file fails start-up with file:line on a bad rule set; it seeds an empty database,
    # after that the database's activation is in force (service_layer/rule_sets.py).
    shipped = rule_set_candidate(settings.rules_file)
    rules = shipped.rules
    engine = create_engine(database)
    keys = KeyCache(engine, refresh_s=settings.keys_refresh_s)
    # The event-id ledger's weekly partitions: made ahead, dropped past the retention window.
    ledger = processed_events_ledger(engine, retention_days=settings.ledger_retention_days)
    # Change history past CLASSIFIER_CHANGE_RETENTION_DAYS, pruned in short batches.
    pruner = Pruner(
        engine,
        retention_rules(settings),
        batch=settings.prune_batch,
        interval_s=settings.prune_interval_s,
    )
    clock = make_clock(settings.clock)
    population_stop = asyncio.Event()
    relay = OutboxRelay(
        engine,
        kafka,
        producer=PRODUCER_NAME,
        batch=consumer_settings.outbox_batch,
        poll_interval=consumer_settings.outbox_poll_ms / 1000,
    )
    wiring = wire(
        rules=rules,
        clock=clock,
        topics=topics,
        settings=settings,
        unit_of_work=lambda: SqlUnitOfWork(engine),
        joining=SqlUnitOfWork.joining,
        engine=engine,
        on_committed=relay.wake,
    )
    stateful = StatefulConsumer(
        engine=engine,
        kafka=kafka,
        settings=consumer_settings,
        group_id=settings.group_id,
        topics=[topics.customer_events],
        dlq_topic=topics.classifier_dlq,
        producer_name=PRODUCER_NAME,
        handler=wiring.handler,
        on_committed=relay.wake,
        watcher=clock.partition_watcher(engine),
        lanes=settings.batch_lanes,
    )
    scheduler, refresher = wiring.scheduler, wiring.refresher
    churn = wiring.classifier.churn

    leadership = wiring.leadership
    snapshots = DistributionSnapshots(
        engine,
        lambda: wiring.classifier.rules,
        leadership,
        every_s=settings.distribution_snapshot_s,
        keep=timedelta(days=settings.distribution_retention_days),
    )
    overrides = EventPublisher(
        kafka, topics.customer_events, timeout_s=settings.override_publish_timeout_s
    )

    async def load_published() -> None:
        """The versions in force before the first batch: a process joining a running group
        classifies by the rule set, population and churn model the others use."""
        try:
            async with SqlUnitOfWork(engine) as uow:
                await seed(uow, shipped, origin=str(settings.rules_file))
            await wiring.rule_sets.follow()
            await refresher.follow()
            await churn_store.follow(engine, churn)
        except Exception as exc:  # the database is away: the loops load them once it is back
            log.warning("published_versions_not_loaded", error=str(exc))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await keys.first_load()
        keys_task = asyncio.create_task(keys.run())
        await load_published()
        tasks = [
            asyncio.create_task(stateful.run()),
            asyncio.create_task(relay.run()),
            asyncio.create_task(scheduler.run()),
            asyncio.create_task(refresher.run()),
            asyncio.create_task(
                model_loop(
                    engine,
                    clock,
                    churn,
                    schedule=FitSchedule(
                        every_s=settings.churn_fit_interval_s,
                        reload_s=settings.churn_reload_s,
                        settle_s=settings.population_settle_s,
                    ),
                    stopping=population_stop,
                    leadership=leadership,
                    # The fit calibrates for the horizon of the rule set in force.
                    config=lambda: rule_set_churn_config(wiring.classifier.rules),
                )
            ),
            asyncio.create_task(ledger.run()),
            asyncio.create_task(wiring.rule_sets.run()),
        ]
        pruning = asyncio.create_task(pruner.run())
        snapshotting = asyncio.create_task(snapshots.run())
        try:
            yield
        finally:
            # Consumer and scheduler first: they commit or abandon their batch; then the relay.
            stateful.stop()
            scheduler.stop()
            population_stop.set()
            refresher.stop()
            snapshots.stop()
            await finish(tasks[3], timeout=15)
            await finish(tasks[4], timeout=15)
            # Every task that asks for the lead has stopped (none takes it back): another
            # process may take it at once.
            await finish(snapshotting, timeout=15)
            await leadership.resign()
            await finish(tasks[0], timeout=15)
            await finish(tasks[2], timeout=15)
            relay.stop()
            await finish(tasks[1], timeout=15)
            ledger.stop()
            await finish(tasks[5], timeout=15)
            wiring.rule_sets.stop()
            await finish(tasks[6], timeout=15)
            keys_task.cancel()
            await finish(keys_task, timeout=1)
            pruner.stop()
            await finish(pruning, timeout=15)
            await overrides.stop()
            await engine.dispose()

    async def broker_ready() -> None:
        producer = relay.kafka_producer
        if producer is None:
            raise BrokerUnavailable("producer not connected")
        await broker_check(producer)()

    async def partitions_ready() -> None:
        if not stateful.ready:
            raise BrokerUnavailable("no partitions assigned yet")

    app = FastAPI(
        title="tierflow classifier",
        version="1.0.0",
        description="Keeps every customer classified; publishes each change.",
        lifespan=lifespan,
    )
    app.include_router(
        build_router(engine, lambda: wiring.classifier.rules, churn=churn, clock=clock)
    )
    app.include_router(
        build_customers_router(
            engine,
            lambda: wiring.classifier.rules,
            churn=churn,
            clock=clock,
            publisher=overrides,
        )
    )
    app.include_router(build_erasure_router(lambda: SqlUnitOfWork(engine), topics))
    app.include_router(
        build_rules_router(
            unit_of_work=lambda: SqlUnitOfWork(engine),
            classifier=wiring.classifier,
            database=database,
            topics=topics,
            workers=settings.simulation_workers,
        )
    )
    app.include_router(build_audit_router(engine))
    install_database_error_handler(app)
    install_auth(app, keys, audit=AuditLog(engine, service="classifier"))
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


def main() -> None:
    from tierflow_common.serve import serve  # noqa: PLC0415
    from tierflow_common.settings import ClassifierHttpSettings  # noqa: PLC0415

    configure_logging(LogSettings(), service="classifier")
    configure_tracing("classifier")  # off unless OTEL_* configures an exporter
    serve(create_app(), ClassifierHttpSettings())
