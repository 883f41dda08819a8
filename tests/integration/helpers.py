"""Drive services in-process (real broker and database) for integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.settings import KafkaSettings

T = TypeVar("T")


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
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
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
