"""Keeps the population statistics current and the customers' RFM and ABC labels consistent
with them.

When: the clock's `refresh_due` — every
CLASSIFIER_POPULATION_REFRESH_S of wall time in production; in replay (event-time clock)
whenever the watermark advanced by CLASSIFIER_POPULATION_REFRESH_EVENT_DAYS, and once more when
it stops moving, so a drained replay ends with the population as of its final watermark.

Then: a sweep over the customers who bought, in id order, a batch per transaction (locked like
the consumer's batches, so no event is applied in between): each customer whose RFM or ABC
label the new statistics change is re-classified at the clock's "now" (or at its own latest
instant if its partition runs ahead of the replay watermark), its changes published with
cause "population:<version>"; a customer whose next recency-quintile crossing moved
earlier gets its review deadline brought forward. The sweep's position is stored with the
statistics, so a restart resumes it; a newer version supersedes it.

Who: with several classifier processes in one consumer group, only the elected one
(adapters/leadership.py) rebuilds and sweeps; the store numbers each published version
(adapters/population_store.publish), so versions never collide. Every process, the leader
included, looks for a newer published version every CLASSIFIER_POPULATION_POLL_S and loads
it; the leader gives them that long (twice over) before it sweeps. A process taking the lead
first finishes the sweep the previous one left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters import population_store as store
from tierflow_classifier.adapters.clock import Clock, RefreshPolicy, Stillness
from tierflow_classifier.adapters.leadership import Leadership
from tierflow_classifier.adapters.population_store import SweepProgress
from tierflow_classifier.domain.model import Change
from tierflow_classifier.domain.population import PopulationStats, population_dimensions
from tierflow_classifier.domain.population_review import after_refresh, outline_suffices
from tierflow_classifier.domain.reclassification import PopulationMoved
from tierflow_classifier.service_layer.reclassify import Classifier, reclassify
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.settings import TopicSettings

log = structlog.get_logger(__name__)


@dataclass
class _Tally:
    reclassified: int = 0
    lowered: int = 0
    spent: dict[str, float] = field(
        default_factory=lambda: {"lock": 0.0, "read": 0.0, "judge": 0.0}
    )


@dataclass
class PopulationRefresher:
    engine: AsyncEngine
    unit_of_work: Callable[[], UnitOfWork]
    classifier: Classifier
    clock: Clock
    topics: TopicSettings
    policy: RefreshPolicy
    on_committed: Callable[[], None] | None = None
    poll_s: float = 1.0
    sweep_batch: int = 500
    sweep_pause_s: float = 0.0
    # Who rebuilds and sweeps: the elected process (None: this one, e.g. in tests).
    leadership: Leadership | None = None
    # How long a new version's sweep waits for the other processes to load it.
    follow_grace_s: float = 0.0

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def follow(self) -> PopulationStats | None:
        """Load the published population if it is not the one this process holds (a version
        read, then the statistics only when they changed); return what is held."""
        population = self.classifier.population
        held = population.stats
        version = await store.published_version(self.engine)
        if version is not None and (held is None or held.version != version):
            stats = await store.load_latest(self.engine)
            if stats is not None:
                population.stats = stats
                log.info("population_loaded", version=stats.version)
        return population.stats

    async def run(self) -> None:
        """Every process follows the published population; the elected one (`leadership`;
        None: this one) also resumes an unfinished sweep when it takes the lead, and rebuilds
        when the clock says so."""
        loop = asyncio.get_running_loop()
        population = self.classifier.population
        resumed = False
        last_attempt: float | None = None
        stillness = Stillness(since=loop.time())
        while not self._stopping.is_set():
            try:
                await self.follow()
                leading = self.leadership is None or await self.leadership.lead()
                if not leading:
                    resumed = False
                else:
                    if not resumed:
                        # Taking the lead: what the previous leader left unswept comes first.
                        last_attempt, stillness = None, Stillness(since=loop.time())
                        stats, progress = await store.load_with_progress(self.engine)
                        if stats is not None:
                            population.stats = stats
                            if progress is not None and not progress.done:
                                await self.sweep(stats, progress)
                        resumed = True
                    async with self.unit_of_work() as uow:
                        now = await self.clock.read(uow.watermarks)
                    wall = loop.time()
                    steady_s = stillness.observe(now, wall)
                    current = population.stats
                    if self.clock.refresh_due(
                        self.policy,
                        now=now,
                        last_at=current.computed_at if current else None,
                        since_attempt_s=None if last_attempt is None else wall - last_attempt,
                        steady_s=steady_s,
                    ):
                        last_attempt = wall
                        await self.refresh(now)
            except Exception as exc:
                log.warning("population_refresh_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_s)

    async def refresh(self, at: datetime | None) -> PopulationStats | None:
        """Rebuild the statistics as of `at`, publish them, give the other processes
        `follow_grace_s` to load them, and sweep the customers they re-classify."""
        if at is None:
            return None
        began = time.monotonic()
        population = self.classifier.population
        fresh = await store.rebuild(self.engine, self.classifier.rules, at)
        if fresh is not None:
            built = time.monotonic()
            population.stats = fresh
            # A process still on the previous version would undo what the sweep does for the
            # customers of its next batch; they all look for a new version every poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.follow_grace_s)
            await self.sweep(fresh, SweepProgress(fresh.version))
            log.info(
                "population_refresh_took",
                version=fresh.version,
                rebuild_s=round(built - began, 3),
                sweep_s=round(time.monotonic() - built, 3),
            )
        return fresh

    async def sweep(self, stats: PopulationStats, progress: SweepProgress) -> bool:
        """Re-evaluate against `stats` from `progress` on; True once every customer is done.

        Customers a consumer or review batch holds right now are not waited for (waiting for
        a few hundred locks one after the other queues behind batch after batch): they are
        deferred to the end of the pass, and the stored position never passes one of them.
        """
        tally = _Tally()
        cursor = safe = progress.after
        deferred: list[str] = []
        population = self.classifier.population
        while not self._stopping.is_set():
            if population.stats is not stats:
                return False  # superseded by a newer version, which sweeps everyone again
            async with self.unit_of_work() as uow:
                ids = await uow.customers.bought_after(cursor, self.sweep_batch)
                if not ids:
                    break
                t0 = time.monotonic()
                locked = set(await uow.customers.try_lock(ids))
                tally.spent["lock"] += time.monotonic() - t0
                changes = await self._judge(uow, stats, [c for c in ids if c in locked], tally)
                for cid in ids:
                    if cid not in locked:
                        deferred.append(cid)
                    elif not deferred:
                        safe = cid
                current = await uow.sweeps.save_progress(SweepProgress(stats.version, safe))
            cursor = ids[-1]
            self._committed(changes)
            if not current:
                return False  # another process published a newer version meanwhile
            # Let fetches, heartbeats and the relay run between batches.
            await asyncio.sleep(self.sweep_pause_s)
        while deferred and not self._stopping.is_set():
            if population.stats is not stats:
                return False
            chunk, deferred = deferred[: self.sweep_batch], deferred[self.sweep_batch :]
            async with self.unit_of_work() as uow:
                t0 = time.monotonic()
                await uow.customers.lock(chunk)  # few, now: wait for their batches
                tally.spent["lock"] += time.monotonic() - t0
                changes = await self._judge(uow, stats, chunk, tally)
                if not deferred:
                    await uow.sweeps.save_progress(SweepProgress(stats.version, cursor))
            self._committed(changes)
            await asyncio.sleep(self.sweep_pause_s)
        if self._stopping.is_set():
            return False
        async with self.unit_of_work() as uow:
            await uow.sweeps.save_progress(SweepProgress(stats.version, cursor, True))
        log.info(
            "population_swept",
            version=stats.version,
            reclassified=tally.reclassified,
            deadlines_lowered=tally.lowered,
            **{f"{k}_s": round(v, 3) for k, v in tally.spent.items()},
        )
        return True

    def _committed(self, changes: list[Change]) -> None:
        if changes and self.on_committed is not None:
            self.on_committed()

    async def _judge(
        self, uow: UnitOfWork, stats: PopulationStats, ids: list[str], tally: _Tally
    ) -> list[Change]:
        """Re-classify those of `ids` (locked) whose RFM/ABC label `stats` changes, bring
        earlier recency crossings forward; return the changes published."""
        if not ids:
            return []
        now = await self.clock.read(uow.watermarks)
        at = stats.computed_at if now is None else max(now, stats.computed_at)
        basis = self.classifier.basis(stats)
        rule_sets = basis.rule_sets()
        t1 = time.monotonic()
        candidates = ids
        earlier: list[tuple[str, datetime]] = []
        if all(outline_suffices(r) for r in rule_sets):
            # Judge the outlines (what the population dimensions read); load in full only the
            # customers to re-classify. A customer of an older rule set or churn model is the
            # review scheduler's to re-evaluate; it reads these statistics too.
            names = sorted({d.name for r in rule_sets for d in population_dimensions(r)})
            candidates = []
            for outline in await uow.customers.outlines(ids, names):
                mine = basis.for_customer(outline.customer_id)
                if outline.rule_set_version != mine.version:
                    continue
                verdict = after_refresh(outline, mine.rules, mine.outside, at)
                if verdict.reclassify_at is not None:
                    candidates.append(outline.customer_id)
                elif verdict.review_by is not None:
                    earlier.append((outline.customer_id, verdict.review_by))
            await uow.customers.lower_reviews(earlier)
        t2 = time.monotonic()
        tally.spent["read"] += t2 - t1
        done = await reclassify(
            uow, basis, candidates, PopulationMoved(at), self.topics, locked=True
        )
        tally.spent["judge"] += time.monotonic() - t2
        tally.reclassified += done.saved
        tally.lowered += len(earlier) + done.reviews_lowered
        return done.published
