"""Publishes the classifier's own records on the customer-events topic (manual overrides) and
returns only once the broker acknowledged them (acks=all): the API's 202 means the override is
in the log, ordered with the customer's other events.

Records are encoded and partitioned as every producer of that topic does (the CloudEvents
binary binding's `encode_event`, key = customer id, `partition_for`), so an override lands on
its customer's partition, behind the events the ingest published before it.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.kafka import make_producer, partition_for
from tierflow_common.settings import KafkaSettings


class EventPublisher:
    def __init__(self, kafka: KafkaSettings, topic: str, *, timeout_s: float = 10.0) -> None:
        self._kafka = kafka
        self._topic = topic
        self._timeout_s = timeout_s
        # Made on first use: aiokafka binds a client to the running loop, and overrides are rare.
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = make_producer(self._kafka, linger_ms=0)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, event: EmittedEvent) -> None:
        """Send the record and wait for the broker's acknowledgement (BrokerUnavailable when
        it does not come within the timeout)."""
        record = encode_event(event)
        try:
            async with asyncio.timeout(self._timeout_s):
                producer = await self._started()
                partitions = sorted(await producer.partitions_for(self._topic))
                sent = await producer.send(
                    self._topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=partition_for(record.key, partitions),
                )
                await sent
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(f"the broker did not acknowledge the record: {exc}") from exc

    async def stop(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
