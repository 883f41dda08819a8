"""Time moves classes: a durable scheduler re-evaluates customers at their review deadlines.

Each customer row carries `next_review_at` (indexed): the earliest instant at which time alone
could change one of its labels (a timer expiring, a month leaving the rolling window, a dwell
ending). The scheduler polls the index a few times a second, so a deadline fires within a
second; it survives restarts because the queue is the table. It also re-evaluates, a batch at a
time, customers classified by an older rule-set version or churn model (resumable: the version
is per row), walking the customers in id order a page at a time, and only in rounds where no
deadline is due, so a re-evaluation of every customer never delays a deadline by more than
one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog

from tierflow_classifier.adapters.clock import Clock
from tierflow_classifier.domain.reclassification import Judging, TimePassed
from tierflow_classifier.service_layer.reclassify import Classifier, reclassify
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.settings import TopicSettings
from tierflow_common.transient import is_transient

log = structlog.get_logger(__name__)


class ReviewScheduler:
    RECHECK_S = 300.0  # look for customers on an older version at least this often
    SCAN_PAGE = 5_000  # customers read per page of a pass looking for older versions
    SCAN_ROUND = 50_000  # customers a round looks through before it checks deadlines again

    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        *,
        classifier: Classifier,
        topics: TopicSettings,
        clock: Clock,
        on_committed: Callable[[], None] | None = None,
        batch: int = 200,
        reevaluate_batch: int = 500,
        reevaluate_per_s: float = 1_000.0,
        poll_s: float = 0.2,
    ) -> None:
        self._uow = unit_of_work
        self._classifier = classifier
        self._topics = topics
        self._clock = clock
        self._on_committed = on_committed
        self._batch = batch
        self._reevaluate_batch = reevaluate_batch
        self._reevaluate_per_s = reevaluate_per_s
        # Loop time before which the next re-evaluation round may not start (the throttle).
        self._rules_not_before = 0.0
        self._poll_s = poll_s
        self._stopping = asyncio.Event()
        # The effective rule-set version every customer was last seen re-evaluated to.
        self._current_version: str | None = None
        self._recheck_at = 0.0
        # The pass looking for customers on an older version: for which version, how far.
        self._pass_version: str | None = None
        self._pass_after = ""

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                done = await self.tick()
                delay = 0.1
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("review_tick_failed")
                else:
                    log.warning("review_tick_retry", error=str(exc))
                done = 0
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            await asyncio.sleep(0)  # let fetches, heartbeats and the relay run between rounds
            if done < self._batch and not self._pass_may_go_on():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), await self._idle_s())

    def _pass_may_go_on(self) -> bool:
        return (
            self._pass_version is not None
            and asyncio.get_running_loop().time() >= self._rules_not_before
        )

    async def _idle_s(self) -> float:
        """How long to wait for the next round: until the earliest stored deadline where the
        clock can tell when that is (so it fires on time, not up to a poll interval late), at
        most `poll_s` (a new event may set an earlier one); sooner if a throttled
        re-evaluation pass may go on before that."""
        wait = self._poll_s
        if self._pass_version is not None:
            throttle = self._rules_not_before - asyncio.get_running_loop().time()
            wait = min(max(throttle, 0.0), wait)

        async def next_deadline() -> datetime | None:
            async with self._uow() as uow:
                return await uow.customers.next_deadline()

        try:
            until = await self._clock.seconds_to_next(next_deadline)
        except Exception:
            return wait
        return wait if until is None else min(until, wait)

    async def _next_stale(self, uow: UnitOfWork, basis: Judging, loop_time: float) -> list[str]:
        """The next customers of the pass classified by a version other than the one `basis`
        judges them by; none when this round's share of the pass held none (the pass goes on
        next round)."""
        version = basis.key
        if self._pass_version != version:
            self._pass_version, self._pass_after = version, ""
        looked = 0
        while looked < self.SCAN_ROUND:
            page = await uow.customers.versions_after(self._pass_after, self.SCAN_PAGE)
            if not page:
                # The pass is through: every customer was found on this version or brought to
                # it. Stop looking until the version changes (a new rule set or churn model),
                # and look again now and then anyway: during a rolling deploy an older process
                # may still write.
                self._current_version, self._pass_version = version, None
                self._recheck_at = loop_time + self.RECHECK_S
                return []
            looked += len(page)
            stale = [cid for cid, v in page if v != basis.version_for(cid)]
            if stale:
                take = stale[: self._reevaluate_batch]
                self._pass_after = take[-1] if len(take) < len(stale) else page[-1][0]
                return take
            self._pass_after = page[-1][0]
        return []

    async def tick(self) -> int:
        """Fire due deadlines (or re-evaluate stale customers); return customers handled."""
        async with self._uow() as uow:
            now = await self._clock.read(uow.watermarks)
            if now is None:
                return 0
            basis = self._classifier.basis()
            version = basis.key
            target = await uow.customers.due(now, self._batch)
            reason = "time"
            loop_time = asyncio.get_running_loop().time()
            if (
                not target
                and loop_time >= self._rules_not_before
                and (
                    self._pass_version is not None
                    or version != self._current_version
                    or loop_time >= self._recheck_at
                )
            ):
                target = await self._next_stale(uow, basis, loop_time)
                reason = "rules"
                self._rules_not_before = loop_time + len(target) / self._reevaluate_per_s
            if not target:
                return 0
            done = await reclassify(uow, basis, target, TimePassed(now), self._topics)
        if done.published and self._on_committed is not None:
            self._on_committed()
        if done.published:
            log.info(
                "reviews_fired", reason=reason, customers=len(target), changes=len(done.published)
            )
        return len(target)
