"""Drive services in-process (real broker and database) for integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from alembic import command

from tests.access import app_client
from tests.support import ROOT, Servers, plain_producer, unique
from tierflow_classifier.bootstrap import create_app as create_classifier
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.db.migrate import alembic_config
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

T = TypeVar("T")


async def database_at(servers: Servers, revision: str) -> DatabaseSettings:
    """A fresh database migrated up to `revision` only: where a migration's test puts the rows
    the migration has to carry over."""
    database = DatabaseSettings(database_url=servers.create_database(unique("migrate")))
    await asyncio.to_thread(command.upgrade, alembic_config(database), revision)
    return database


@asynccontextmanager
async def classifier_client(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    *,
    consumer: ConsumerSettings | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """A classifier app running in this process (consumer, scheduler, relay, API) in its own
    consumer group, with an HTTP client on its API that sends a key with every role;
    `settings` are ClassifierSettings fields."""
    app = create_classifier(
        kafka=kafka,
        database=database,
        topics=topics,
        consumer=consumer or ConsumerSettings(),
        settings=ClassifierSettings(
            rules_file=ROOT / "config" / "classifier.yaml",
            group_id=unique("classifier"),
            **settings,
        ),
    )
    async with app_client(app, database, base_url="http://classifier") as client:
        yield client


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 20.0,
    what: str = "condition",
) -> T:
    """Poll `probe` until `done(result)` or fail with the last result (no blind sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s; last: {result!r}")
        await asyncio.sleep(0.05)


def purchase_event(
    event_id: str,
    customer: str,
    amount: str,
    *,
    currency: str = "USD",
    source: str = "shop",
    time: datetime | None = None,
) -> EmittedEvent:
    return EmittedEvent(
        id=event_id,
        type="purchase",
        source=source,
        subject=customer,
        # Recent: the classifier judges on the wall clock, and rolling windows look back 12 months.
        time=time or datetime.now(UTC) - timedelta(hours=1),
        data={"order_id": event_id, "amount": amount, "currency": currency},
    )


async def produce(
    kafka: KafkaSettings, topic: str, items: Sequence[EmittedEvent | tuple[bytes, bytes, list[Any]]]
) -> None:
    producer = plain_producer(kafka)
    await producer.start()
    try:
        futures = []
        for item in items:
            if isinstance(item, EmittedEvent):
                rec = encode_event(item)
                key, value, headers = rec.key, rec.value, rec.headers
            else:
                key, value, headers = item
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """An app whose lifespan already runs, also served over HTTP on a free port (for the
    `tierflow` CLI, which speaks HTTP): its base URL."""
    import uvicorn  # noqa: PLC0415 - only the tests that serve over HTTP need it

    from tierflow_common.embedded import free_port  # noqa: PLC0415

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return bool(server.started)

    try:
        await eventually(started, bool, timeout=10, what="HTTP server started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
