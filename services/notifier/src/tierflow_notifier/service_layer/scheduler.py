"""Fires due schedule entries: sleeps until the nearest due time (woken early whenever a
consumer commits, since it may have scheduled something sooner), then claims due rows with
FOR UPDATE SKIP LOCKED and creates their actions in the same transaction that advances or
deletes them. Durable: a restart picks up exactly the rows not yet fired.

A consumer's commit wakes it only if it scheduled something due before the scheduler would look
anyway (`wake_for`): most commits schedule nothing, or a follow-up days ahead, and a tick per
commit was a transaction and two queries per consumer batch for nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_common.contract.ids import rfc3339
from tierflow_common.erasure import erased_through
from tierflow_common.outbox import enqueue
from tierflow_common.transient import is_transient
from tierflow_notifier.adapters import customer_scores, projection
from tierflow_notifier.domain.playbooks import ComplaintTrigger, PlannedAction, Playbook
from tierflow_notifier.domain.schedules import ScheduleEntry, fire
from tierflow_notifier.metrics import OPEN_TASKS, SCHEDULE_LAG, SCHEDULES_FIRED
from tierflow_notifier.service_layer.actions import ActionWriter, Tally
from tierflow_notifier.service_layer.erasure import SERVICE

log = structlog.get_logger(__name__)
GAUGE_EVERY_S = 15.0


class Scheduler:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        playbook: Playbook,
        writer: ActionWriter,
        producer_name: str,
        clock: Callable[[], datetime],
        batch: int,
        max_sleep: float,
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._playbook = playbook
        self._writer = writer
        self._producer = producer_name
        self._clock = clock
        self._batch = batch
        self._max_sleep = max_sleep
        self._on_committed = on_committed
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._gauge_at = 0.0
        # While asleep: when it will look again by itself (None: awake, or about to decide).
        self._asleep_until: datetime | None = None
        self._next_due: datetime | None = None  # read by the last tick that found nothing due

    def wake(self) -> None:
        self._wakeup.set()

    def wake_for(self, due: datetime | None) -> None:
        """Something was scheduled for `due` (None: nothing): wake now unless the scheduler
        will look before then anyway."""
        if due is None:
            return
        asleep_until = self._asleep_until
        if asleep_until is None or due < asleep_until:
            self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.1
        while not self._stopping:
            self._wakeup.clear()
            try:
                fired = await self.tick()
                if fired >= self._batch:
                    continue  # more are due right now
                if loop.time() - self._gauge_at > GAUGE_EVERY_S:
                    self._gauge_at = loop.time()
                    await self._refresh_open_tasks()
                sleep = self._until(self._next_due) if not fired else await self._seconds_to_next()
                delay = 0.1
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("scheduler_tick_failed")
                else:
                    log.warning("scheduler_retry", error=str(exc), retry_in=delay)
                sleep = delay
                delay = min(delay * 2, 5.0)
            if sleep > 0:
                # Set before waiting, after reading the next due time: a commit from now on
                # is compared with it; one before found None and set the event.
                self._asleep_until = self._clock() + timedelta(seconds=sleep)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), sleep)
                self._asleep_until = None

    def _until(self, nxt: datetime | None) -> float:
        if nxt is None:
            return self._max_sleep
        # The cap also covers entries other processes schedule (their commits do not wake us).
        return min(max(0.0, (nxt - self._clock()).total_seconds()), self._max_sleep)

    async def _seconds_to_next(self) -> float:
        async with self._engine.connect() as conn:
            return self._until(await projection.next_due(conn))

    async def tick(self) -> int:
        """Fire what is due now; return how many entries were processed."""
        now = self._clock()
        tally = Tally()
        async with self._engine.begin() as conn:
            due = await projection.claim_due(conn, now, self._batch)
            if not due:
                self._next_due = await projection.next_due(conn)  # same transaction: no checkout
                return 0
            planned, advance, finished = await self._plan(conn, due, now)
            written = await self._writer.write(conn, planned, now)
            await projection.upsert_schedules(conn, advance, "replace")
            await projection.delete_schedules(conn, finished)
            await enqueue(conn, self._producer, written.emit)
            tally = written.tally
        tally.publish()
        for entry in due:
            SCHEDULES_FIRED.labels(rule=entry.rule_id).inc()
            SCHEDULE_LAG.observe(max(0.0, (now - entry.due_at).total_seconds()))
        if self._on_committed is not None and written.emit:
            self._on_committed()
        return len(due)

    async def _plan(
        self, conn: AsyncConnection, due: list[ScheduleEntry], now: datetime
    ) -> tuple[list[PlannedAction], list[ScheduleEntry], list[str]]:
        contacts = await projection.load_contacts(conn, [e.customer_id for e in due])
        complaint_rules = {r.id for r in self._playbook.scheduled(ComplaintTrigger)}
        pairs = [(e.customer_id, e.ref) for e in due if e.rule_id in complaint_rules and e.ref]
        resolved = await projection.resolved_complaints(conn, pairs)
        # Customers who follow an erased one under the same id (rare: usually none).
        erased = await erased_through(conn, SERVICE, [e.customer_id for e in due])
        default_tz = self._playbook.policy.default_timezone
        planned: list[PlannedAction] = []
        advance: list[ScheduleEntry] = []
        finished: list[str] = []
        for entry in due:
            rule = self._playbook.rule(entry.rule_id)
            if rule is None:  # the rule was removed from the playbook
                finished.append(entry.schedule_id)
                continue
            mine = frozenset(c for (cust, c) in resolved if cust == entry.customer_id)
            through = erased.get(entry.customer_id)
            facts = projection.facts(
                contacts.get(entry.customer_id),
                default_tz,
                mine,
                generation=None if through is None else rfc3339(through),
            )
            action, nxt = fire(entry, rule, facts, now)
            if action is not None:
                # The customer's latest known scores: scheduled work ranks by them too.
                known = customer_scores.scores(contacts.get(entry.customer_id))
                planned.append(replace(action, scores=known) if known else action)
            if nxt is None:
                finished.append(entry.schedule_id)
            else:
                advance.append(nxt)
        return planned, advance, finished

    async def _refresh_open_tasks(self) -> None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        """
                        SELECT
                          count(*) FILTER (WHERE created_at > now() - interval '1 hour') AS h1,
                          count(*) FILTER (WHERE created_at <= now() - interval '1 hour'
                                             AND created_at > now() - interval '1 day') AS d1,
                          count(*) FILTER (WHERE created_at <= now() - interval '1 day'
                                             AND created_at > now() - interval '7 days') AS d7,
                          count(*) FILTER (WHERE created_at <= now() - interval '7 days') AS old
                        FROM care_actions WHERE status IN ('open', 'acked')
                        """
                    )
                )
            ).one()
        for label, value in (("lt_1h", row.h1), ("1h_1d", row.d1), ("1d_7d", row.d7)):
            OPEN_TASKS.labels(age=label).set(value)
        OPEN_TASKS.labels(age="gt_7d").set(row.old)
