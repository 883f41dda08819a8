"""The intake step shared by every endpoint: rate limit, publish with acks, record receipts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from tierflow_common.contract import CustomerEvent
from tierflow_common.trace_context import TraceContext
from tierflow_ingest.adapters.publisher import KafkaPublisher
from tierflow_ingest.adapters.receipts import ReceiptWriter
from tierflow_ingest.domain.access import TokenBucket
from tierflow_ingest.entrypoints.metrics import ACCEPTED, DUPLICATES

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Accepted:
    duplicate: bool | None  # None: acknowledged, but the receipt store could not say


# Immutable, so one instance per answer serves every event.
_ACCEPTED = {d: Accepted(d) for d in (True, False, None)}


@dataclass(frozen=True)
class Failed:
    reason: str


Outcome = Accepted | Failed


@dataclass
class RateLimiter:
    """One token bucket per API key; `rate` <= 0 disables limiting."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def _bucket(self, key_id: str) -> TokenBucket:
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(self.rate, self.burst)
        return bucket

    def check(self, key_id: str, n: int) -> int | None:
        """None if `n` events may go now, else the Retry-After seconds."""
        if self.rate <= 0:
            return None
        bucket = self._bucket(key_id)
        if bucket.take(n, self.clock()) == 0.0:
            return None
        return bucket.retry_after(n)

    def exhausted(self, key_id: str) -> int | None:
        """The Retry-After seconds if the key has not even one event left now (its request can
        be refused before its body is read), else None."""
        if self.rate <= 0:
            return None
        bucket = self._bucket(key_id)
        bucket.take(0, self.clock())  # refilled to now
        return bucket.retry_after(1) if bucket.tokens < 1 else None

    async def wait(self, key_id: str, n: int) -> None:
        """Pace a streamed upload instead of refusing it."""
        if self.rate <= 0:
            return
        bucket = self._bucket(key_id)
        remaining = n
        while remaining > 0:
            part = min(remaining, max(int(self.burst), 1))
            delay = bucket.take(part, self.clock())
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                remaining -= part


@dataclass
class Intake:
    publisher: KafkaPublisher
    receipts: ReceiptWriter

    async def accept(
        self, events: Sequence[CustomerEvent], trace: TraceContext | None = None
    ) -> list[Outcome]:
        """Publish and await the broker's acks; then record receipts to spot resends. `trace`:
        the request's trace context, carried by the events that have none of their own.

        Raises BrokerUnavailable / Overloaded when nothing could be attempted.
        """
        errors = await self.publisher.publish(events, trace)
        acked = [e for e, err in zip(events, errors, strict=True) if err is None]
        flags: list[bool | None] | None
        try:
            flags = await self.receipts.record([(e.source, e.id, e.time) for e in acked])
        except Exception as exc:
            log.warning("receipts_unavailable", error=str(exc))
            flags = None
        outcomes: list[Outcome] = []
        new_flags = iter(flags or [])
        debug = log.is_enabled_for(logging.DEBUG)
        duplicates = 0
        for event, err in zip(events, errors, strict=True):
            if err is not None:
                outcomes.append(Failed(str(err)))
                continue
            new = None if flags is None else next(new_flags)
            duplicate = None if new is None else not new  # None also: older than the receipts
            duplicates += duplicate is True
            if debug:
                log.debug(
                    "event_accepted",
                    event_id=event.id,
                    source=event.source,
                    customer_id=event.subject,
                    duplicate=duplicate,
                )
            outcomes.append(_ACCEPTED[duplicate])
        ACCEPTED.inc(len(acked))
        if duplicates:
            DUPLICATES.inc(duplicates)
        return outcomes
