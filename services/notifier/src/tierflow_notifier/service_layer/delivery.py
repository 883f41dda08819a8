"""Delivery workers: one per endpoint, each with its own HTTP client, concurrency bound and
circuit breaker, so a slow or dead endpoint delays only itself — never other endpoints, never
the consumers (which only insert delivery rows).

A worker keeps up to `concurrency` requests in flight, leasing due rows as slots free up, and
writes finished attempts back in small batches. At-least-once: a crash after a 2xx but before
the write re-sends after the lease; the webhook-id (= action id) lets receivers dedupe.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common import tracing
from tierflow_common.trace_context import TraceContext, from_json, of_span
from tierflow_common.transient import is_transient
from tierflow_notifier.adapters import repository
from tierflow_notifier.adapters.http import HttpClient, Post, with_trace
from tierflow_notifier.domain.delivery import CircuitBreaker, backoff_delay
from tierflow_notifier.metrics import BREAKER_OPEN, BREAKER_OPENED, DELIVERIES, DELIVERY_LATENCY

log = structlog.get_logger(__name__)
# Finished attempts are written together (like a producer's linger): a crash before the write
# re-sends them after the lease, with the same webhook-id.
RESULT_BATCH = 200
RESULT_LINGER_S = 0.05


class RequestBuilder(Protocol):
    url: str

    def __call__(self, action: dict[str, Any], now: datetime) -> Post: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_s: float
    max_s: float
    lease_s: float
    poll_s: float
    concurrency: int
    batch: int
    timeout_s: float = 10.0

    @property
    def send_within_s(self) -> float:
        """A leased row is sent only this long after its claim: its request then ends (or
        times out) before the lease does, so no other worker can send it at the same time."""
        usable = self.lease_s - self.timeout_s - 1.0
        return usable if usable > 0 else self.lease_s / 2


class EndpointWorker:
    def __init__(
        self,
        *,
        name: str,
        engine: AsyncEngine,
        build: RequestBuilder,
        client: HttpClient,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._engine = engine
        self._build = build
        self._client = client
        self._policy = policy
        self.breaker = breaker
        self._clock = clock
        self._rand = rand
        self._activity = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._results: list[dict[str, Any]] = []
        self._metrics: list[tuple[str, float | None]] = []
        self._recovered = False  # the probe after the breaker had opened succeeded
        self._queue: deque[tuple[float, dict[str, Any]]] = deque()  # (send by, row), leased
        self._look = True  # whether the database may hold due rows we have not leased
        self._results_since = 0.0
        self._claimed_at = 0.0
        self._latency = DELIVERY_LATENCY.labels(endpoint=name)
        # Set at the transitions only (opened: 1, closed: 0), not where the worker happens to
        # look at the breaker: it stays 1 through the probes (half-open) of an outage.
        self._breaker_open = BREAKER_OPEN.labels(endpoint=name)
        self._breaker_open.set(0 if breaker.state == "closed" else 1)

    def wake(self) -> None:
        """New deliveries may be due: look in the database at the next turn."""
        self._look = True
        self._activity.set()

    def stop(self) -> None:
        self._stopping = True
        self._activity.set()

    async def run(self) -> None:
        delay = 0.1
        try:
            while not (self._stopping and not self._inflight):
                self._activity.clear()
                try:
                    await self._flush(force=self._stopping)
                    if self._recovered:
                        await self._release_backlog()
                    if not self._stopping:
                        await self._refill()
                        self._start_sends()
                    delay = 0.1
                except Exception as exc:
                    if not is_transient(exc):
                        log.exception("delivery_worker_failed", endpoint=self.name)
                    else:
                        log.warning("delivery_retry", endpoint=self.name, error=str(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                await self._wait(self._idle_timeout())
        finally:
            for task in self._inflight:
                task.cancel()
            await self._final_flush()
            await self._unlease_queue()

    def _idle_timeout(self) -> float:
        if not self.breaker.allow():
            return max(0.05, self.breaker.seconds_until_probe())
        if self._results:
            return max(0.001, RESULT_LINGER_S - (time.monotonic() - self._results_since))
        return self._policy.poll_s

    async def _wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._activity.wait(), timeout)
        except TimeoutError:
            return

    async def _release_backlog(self) -> None:
        """The endpoint answers again: what waited out its backoff during the outage is due
        now, so recovery drains the backlog at full speed instead of over the next minutes."""
        async with self._engine.begin() as conn:
            released = await repository.release_backlog(conn, self.name, self._clock())
        self._recovered = False
        self._look = True
        log.info("delivery_endpoint_recovered", endpoint=self.name, released=released)

    async def _refill(self) -> None:
        """Lease due rows into the local queue when it runs low (one query per `batch`, not per
        request). After a short read the database is drained: look again only when woken (new
        actions, an API retry) or at the poll, not after every finished request."""
        if len(self._queue) >= self._policy.concurrency:
            return
        # The poll: rows may have come due without a wake (retries, deferred actions).
        polled = time.monotonic() - self._claimed_at >= self._policy.poll_s
        if not (self._look or polled):
            return
        if not self.breaker.allow():
            return
        want = max(self._policy.batch, self._policy.concurrency) - len(self._queue)
        self._look = False  # a wake() while we read sets it again
        now = self._clock()
        async with self._engine.begin() as conn:
            rows = await repository.claim_deliveries(
                conn,
                self.name,
                now=now,
                lease_until=now + timedelta(seconds=self._policy.lease_s),
                limit=want,
            )
        self._claimed_at = time.monotonic()
        send_by = self._claimed_at + self._policy.send_within_s
        self._queue.extend((send_by, row) for row in rows)
        self._look = self._look or len(rows) == want

    def _start_sends(self) -> None:
        if not self._queue or not self.breaker.allow():
            return
        room = self._policy.concurrency - len(self._inflight)
        if self.breaker.state == "half_open":
            room = 0 if self._inflight else 1  # a single probe decides whether to close
        now = time.monotonic()
        while room > 0 and self._queue:
            send_by, row = self._queue.popleft()
            if now > send_by:
                # Its lease is (nearly) over, e.g. while the breaker was open: leave it to
                # the next claim, which may be another worker's.
                self._look = True
                continue
            task = asyncio.create_task(self._sender(row))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            room -= 1

    async def _unlease_queue(self) -> None:
        """On stop, hand back leased rows never sent, so a restart need not wait out the lease."""
        if not self._queue:
            return
        ids = [row["delivery_id"] for _, row in self._queue]
        self._queue.clear()
        try:
            async with self._engine.begin() as conn:
                await repository.unlease(conn, ids)
        except Exception as exc:  # the lease expires anyway
            log.warning("delivery_unlease_failed", endpoint=self.name, error=str(exc))

    async def _sender(self, row: dict[str, Any] | None) -> None:
        """Send `row`, then keep taking rows from the queue while the endpoint is healthy: one
        task per slot, not per request, and the main loop is woken only when there is work for
        it (refill the queue, write results, the breaker changed), not after every request."""
        try:
            while row is not None:
                await self._send(row)
                row = self._next_row()
        finally:
            self._activity.set()

    def _next_row(self) -> dict[str, Any] | None:
        if self._stopping or self.breaker.state != "closed":
            return None
        if len(self._results) >= RESULT_BATCH:
            self._activity.set()
        now = time.monotonic()
        while self._queue:
            send_by, row = self._queue.popleft()
            if len(self._queue) < self._policy.concurrency:
                self._activity.set()  # time to lease more
            if now <= send_by:
                return row
            self._look = True  # lease (nearly) over: leave it to the next claim
        return None

    async def _send(self, row: dict[str, Any]) -> None:
        now = self._clock()
        error: str | None = None
        attempts = int(row["attempts"]) + 1
        trace = from_json(row.get("trace_context"))
        try:
            if tracing.enabled():
                status = await self._post_in_span(row, now, trace, attempts)
            else:
                status = await self._client.post(with_trace(self._build(row, now), trace))
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except Exception as exc:  # any failure to send is a failed attempt, never a lost row
            error = f"{type(exc).__name__}: {exc}"[:500]
        done = self._clock()
        if not self._results:
            self._results_since = time.monotonic()
        if error is None:
            if self.breaker.state != "closed":
                # The probe after an outage (or a request sent before it opened) succeeded.
                self._recovered = True
                self._breaker_open.set(0)
            self.breaker.record_success()
            since = row.get("deliver_at") or row.get("created_at")
            latency = (done - since).total_seconds() if isinstance(since, datetime) else None
            self._results.append(_result(row, "delivered", attempts, done, None, done))
            self._metrics.append(("delivered", latency))
        else:
            was = self.breaker.state
            self.breaker.record_failure()
            if was == "closed" and self.breaker.state == "open":
                # Once per outage: a failed probe re-opens it quietly (every cooldown).
                self._breaker_open.set(1)
                BREAKER_OPENED.labels(endpoint=self.name).inc()
                log.warning(
                    "delivery_circuit_opened",
                    endpoint=self.name,
                    failures=self.breaker.failures,
                    cooldown_s=self.breaker.cooldown,
                    error=error,
                )
            dead = attempts >= self._policy.max_attempts
            wait = backoff_delay(
                attempts, base=self._policy.base_s, cap=self._policy.max_s, rand=self._rand
            )
            nxt = done + timedelta(seconds=wait)
            self._results.append(
                _result(row, "dead" if dead else "pending", attempts, nxt, error, None)
            )
            self._metrics.append(("dead_lettered" if dead else "failed", None))
            if dead:
                log.warning(
                    "delivery_dead", endpoint=self.name, action_id=row["action_id"], error=error
                )

    async def _post_in_span(
        self, row: dict[str, Any], now: datetime, trace: TraceContext | None, attempt: int
    ) -> int:
        """The POST inside a client span (child of the action's trace), whose context the
        request's `traceparent` header carries."""
        attributes = {
            "http.request.method": "POST",
            "tierflow.action_id": str(row["action_id"]),
            "tierflow.attempt": attempt,
        }
        with tracing.span(
            "webhook delivery", trace, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            post = with_trace(self._build(row, now), of_span(span) or trace)
            status = await self._client.post(post)
            span.set_attribute("http.response.status_code", status)
            if not 200 <= status < 300:
                span.set_status(StatusCode.ERROR, f"HTTP {status}")
            return status

    async def _flush(self, *, force: bool = False) -> None:
        """Write finished attempts in one statement: when RESULT_BATCH are waiting, when the
        oldest has waited RESULT_LINGER_S, or when nothing else is in flight."""
        if not self._results:
            return
        if not (
            force
            or len(self._results) >= RESULT_BATCH
            or not self._inflight
            or time.monotonic() - self._results_since >= RESULT_LINGER_S
        ):
            return
        results, metrics = self._results, self._metrics
        self._results, self._metrics = [], []
        try:
            async with self._engine.begin() as conn:
                await repository.record_results(conn, results)
        except Exception:
            # Keep them for the next round; the lease keeps the rows ours meanwhile.
            self._results[:0], self._metrics[:0] = results, metrics
            raise
        counted: dict[str, int] = {}
        for outcome, latency in metrics:
            counted[outcome] = counted.get(outcome, 0) + 1
            if latency is not None:
                self._latency.observe(max(0.0, latency))
        for outcome, n in counted.items():
            DELIVERIES.labels(endpoint=self.name, outcome=outcome).inc(n)

    async def _final_flush(self) -> None:
        deadline = time.monotonic() + 5
        while self._results and time.monotonic() < deadline:
            try:
                await self._flush(force=True)
            except Exception as exc:
                log.warning("delivery_final_flush_failed", endpoint=self.name, error=str(exc))
                await asyncio.sleep(0.2)


def _result(
    row: dict[str, Any],
    state: str,
    attempts: int,
    next_at: datetime,
    error: str | None,
    delivered_at: datetime | None,
) -> dict[str, Any]:
    return {
        "b_id": row["delivery_id"],
        "b_state": state,
        "b_attempts": attempts,
        "b_next": next_at,
        "b_error": error,
        "b_delivered_at": delivered_at,
    }
