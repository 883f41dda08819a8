"""Publishes accepted events to Kafka and reports success only after the broker's acks=all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tierflow_common.backoff import Backoff
from tierflow_common.contract import CustomerEvent
from tierflow_common.contract.kafka_binding import EmittedEvent, KafkaRecord, encode_event
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_ingest.exceptions import Overloaded

log = structlog.get_logger(__name__)


def to_record(event: CustomerEvent) -> KafkaRecord:
    envelope = EmittedEvent(
        id=event.id, type=event.type, source=event.source, subject=event.subject, time=event.time
    )
    # Unset stays absent, explicit null stays null: a profile patch may clear a field.
    return encode_event(envelope, data_json=event.data.model_dump_json(exclude_unset=True).encode())


class KafkaPublisher:
    def __init__(
        self,
        producer_factory: Callable[[], AIOKafkaProducer],
        *,
        topic: str,
        max_in_flight: int,
        timeout_s: float,
    ) -> None:
        # aiokafka binds clients to the running loop, so the producer is made in start().
        self._factory = producer_factory
        self.producer: AIOKafkaProducer | None = None
        self._topic = topic
        self._timeout = timeout_s
        self._capacity = max_in_flight
        self.in_flight = 0
        self.started = False

    async def start(self) -> None:
        """Connect, retrying until the broker answers (readiness reports it meanwhile)."""
        backoff = Backoff(first=0.2)
        while True:
            producer = self._factory()
            try:
                await producer.start()
                self.producer = producer
                self.started = True
                return
            except KafkaError as exc:
                await producer.stop()
                log.warning("broker_unreachable", error=str(exc), retry_in=backoff.delay)
                await backoff.wait()

    async def stop(self) -> None:
        if self.producer is not None:
            self.started = False
            await self.producer.stop()

    async def publish(self, events: Sequence[CustomerEvent]) -> list[BaseException | None]:
        """Send and await acks; one result per event (None = durably acknowledged)."""
        producer = self.producer
        if producer is None or not self.started:
            raise BrokerUnavailable("not connected to the broker yet")
        if self.in_flight + len(events) > self._capacity:
            raise Overloaded(f"{self.in_flight} events already awaiting broker acknowledgement")
        self.in_flight += len(events)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            futures: list[asyncio.Future[object] | BaseException] = []
            for event in events:
                record = to_record(event)
                try:
                    # send() itself blocks while metadata is unknown (broker down): bound it.
                    futures.append(
                        await asyncio.wait_for(
                            producer.send(
                                self._topic,
                                value=record.value,
                                key=record.key,
                                headers=record.headers,
                            ),
                            max(deadline - loop.time(), 0.001),
                        )
                    )
                except (KafkaError, TimeoutError) as exc:
                    futures.append(exc)
            pending = [f for f in futures if not isinstance(f, BaseException)]
            if pending:
                await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0.001))
            results: list[BaseException | None] = []
            for f in futures:
                if isinstance(f, BaseException):
                    results.append(BrokerUnavailable(str(f)))
                elif not f.done():
                    # The record may still be delivered later; the client resends and dedup holds.
                    f.add_done_callback(_consume_result)
                    results.append(BrokerUnavailable("broker did not acknowledge in time"))
                elif f.exception() is not None:
                    results.append(BrokerUnavailable(str(f.exception())))
                else:
                    results.append(None)
            return results
        finally:
            self.in_flight -= len(events)


def _consume_result(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
