"""Publishes accepted events to Kafka and reports success only after the broker's acks=all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tierflow_common.backoff import Backoff
from tierflow_common.contract import CustomerEvent
from tierflow_common.contract.kafka_binding import KafkaRecord, binary_headers
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.kafka import partition_for
from tierflow_common.trace_context import TRACEPARENT, TraceContext
from tierflow_ingest.exceptions import Overloaded

log = structlog.get_logger(__name__)


def to_record(event: CustomerEvent, trace: TraceContext | None = None) -> KafkaRecord:
    """The binary-mode record of an accepted event (the bytes `encode_event` gives it); an
    event without a `traceparent` of its own takes `trace` (the request's) as one."""
    attributes = event.__pydantic_extra__
    if event.dataschema is not None:
        attributes = {**(attributes or {}), "dataschema": event.dataschema}
    if trace is not None and not (attributes and TRACEPARENT in attributes):
        attributes = {**(attributes or {}), **trace.attributes()}
    # Extensions are kept, each a `ce_*` header; `datacontenttype` is the content-type.
    headers = binary_headers(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        time=event.time,
        attributes=attributes,
        datacontenttype=event.datacontenttype,
    )
    # Unset stays absent, explicit null stays null: a profile patch may clear a field.
    value = event.data.__pydantic_serializer__.to_json(event.data, exclude_unset=True)
    return KafkaRecord(key=event.subject.encode(), value=value, headers=headers)


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

    async def publish(
        self, events: Sequence[CustomerEvent], trace: TraceContext | None = None
    ) -> list[BaseException | None]:
        """Send and await acks; one result per event (None = durably acknowledged). `trace`:
        the request's trace context, for the events that carry none.

        The records go to the producer back to back (no await yields while the topic's
        metadata is known and the batches have room), so one request's records share the
        producer's batches and are acknowledged together; one deadline bounds both steps.
        """
        producer = self.producer
        if producer is None or not self.started:
            raise BrokerUnavailable("not connected to the broker yet")
        n = len(events)
        if self.in_flight + n > self._capacity:
            raise Overloaded(f"{self.in_flight} events already awaiting broker acknowledgement")
        self.in_flight += n
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            results: list[BaseException | None] = [None] * n
            futures: list[asyncio.Future[object] | None] = [None] * n
            topic = self._topic
            sent = 0
            try:
                # Metadata and send() block while the broker is unknown (down): bound them.
                async with asyncio.timeout_at(deadline):
                    partitions = sorted(await producer.partitions_for(topic))
                    for event in events:
                        record = to_record(event, trace)
                        try:
                            futures[sent] = await producer.send(
                                topic,
                                value=record.value,
                                key=record.key,
                                headers=record.headers,
                                partition=partition_for(record.key, partitions),
                            )
                        except KafkaError as exc:
                            results[sent] = BrokerUnavailable(str(exc))
                        sent += 1
            except TimeoutError:
                for i in range(sent, n):
                    results[i] = BrokerUnavailable("broker did not take the record in time")
            except KafkaError as exc:  # from the metadata: nothing was sent
                for i in range(sent, n):
                    results[i] = BrokerUnavailable(str(exc))
            pending = [f for f in futures if f is not None and not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0.001))
            for i, f in enumerate(futures):
                if f is None:
                    continue
                if not f.done():
                    # The record may still be delivered later; the client resends and dedup holds.
                    f.add_done_callback(_consume_result)
                    results[i] = BrokerUnavailable("broker did not acknowledge in time")
                elif f.cancelled():
                    results[i] = BrokerUnavailable("send cancelled")
                elif (error := f.exception()) is not None:
                    results[i] = BrokerUnavailable(str(error))
            return results
        finally:
            self.in_flight -= n


def _consume_result(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
