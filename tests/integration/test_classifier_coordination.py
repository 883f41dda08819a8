"""Several classifier processes on one database: exactly one is elected to rebuild the
population and fit the churn model, versions published by racing publishers never collide,
and every process loads a new version within a poll of its publication. (The 1-vs-2-process
equivalence over a real stream is tests/e2e/test_classifier_group.py.)"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import eventually
from tests.support import ROOT
from tierflow_classifier.adapters import churn_store, population_store
from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.churn_store import ChurnModelHolder
from tierflow_classifier.adapters.clock import FitSchedule, RefreshPolicy, WallClock
from tierflow_classifier.adapters.leadership import Leadership
from tierflow_classifier.adapters.population_store import PopulationHolder
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.churn import FittedModel, fit_model
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.domain.population import PopulationStats
from tierflow_classifier.service_layer.population_refresh import PopulationRefresher
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.unit_of_work import SqlUnitOfWork
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import churn_models
from tierflow_common.settings import DatabaseSettings, TopicSettings

pytestmark = pytest.mark.integration

RULES = load_rules(ROOT / "config" / "classifier.yaml")
T = TypeVar("T")


def bought(cid: str, at: datetime, amount: int) -> CustomerState:
    meta = EventMeta("shop", f"{cid}-o1", cid, at)
    state, _ = apply(None, Purchase(meta, f"{cid}-o1", Decimal(amount), "USD"), RULES, at=at)
    return state


async def seed_customers(engine: AsyncEngine, now: datetime, n: int = 40) -> None:
    states = [bought(f"c-{i:03d}", now - timedelta(days=i + 1), 10 * (i + 1)) for i in range(n)]
    async with engine.begin() as conn:
        await repo.save_states(conn, states)


def synthetic_model(seed: int) -> FittedModel:
    rng = np.random.default_rng(seed)
    n = 200
    x = rng.poisson(2, n).astype(float)
    big_t = rng.uniform(10, 60, n)
    t_x = np.where(x > 0, rng.uniform(0, 1, n) * big_t, 0.0)
    spend = np.where(x > 0, rng.uniform(10, 200, n), np.nan)
    return fit_model(x, t_x, big_t, spend, time_unit_days=7.0)


def refresher(
    engine: AsyncEngine, leadership: Leadership | None, every_s: float = 0.5
) -> CountingRefresher:
    return CountingRefresher(
        engine,
        lambda: SqlUnitOfWork(engine),
        Classifier(RULES, PopulationHolder(), ChurnModelHolder()),
        WallClock(),
        TopicSettings(),
        RefreshPolicy(every=timedelta(seconds=every_s), min_gap_s=0.1),
        poll_s=0.1,
        leadership=leadership,
        follow_grace_s=0.2,
    )


@dataclass
class CountingRefresher(PopulationRefresher):
    """Records the version of every population it publishes itself."""

    published: list[int] = field(default_factory=list)

    async def refresh(self, at: datetime | None) -> PopulationStats | None:
        fresh = await super().refresh(at)
        if fresh is not None:
            self.published.append(fresh.version)
        return fresh


async def test_racing_publishers_get_distinct_versions_and_never_go_back(
    database: DatabaseSettings,
) -> None:
    now = datetime.now(UTC)
    engines = [create_engine(database), create_engine(database)]
    try:
        await seed_customers(engines[0], now)
        # Two "processes", five rebuilds each, all at once.
        results = await asyncio.gather(
            *(
                population_store.rebuild(engines[i % 2], RULES, now + timedelta(seconds=i))
                for i in range(10)
            )
        )
        published = [r for r in results if r is not None]
        versions = [r.version for r in published]
        assert len(set(versions)) == len(versions)  # no two publications share an id
        stored = await population_store.load_latest(engines[0])
        assert stored is not None
        # The stored one is the latest-numbered, and numbering followed publication order:
        # a later version is never as of an earlier instant than the one it replaced.
        assert stored.version == max(versions)
        by_version = sorted(published, key=lambda s: s.version)
        assert all(a.computed_at <= b.computed_at for a, b in itertools.pairwise(by_version))
        assert stored.computed_at == by_version[-1].computed_at
        # A population as of an earlier instant than the published one is not published.
        assert await population_store.rebuild(engines[1], RULES, now - timedelta(hours=1)) is None
        after = await population_store.load_latest(engines[0])
        assert after == stored
    finally:
        for engine in engines:
            await engine.dispose()


async def test_one_process_is_elected_and_another_takes_over_when_it_goes(
    database: DatabaseSettings,
) -> None:
    engines = [create_engine(database), create_engine(database)]
    first, second = (Leadership(e, recheck_s=0.0) for e in engines)
    try:
        assert await first.lead()
        assert not await second.lead()
        assert await first.lead()  # still, and only it
        await first.resign()
        assert await second.lead()
        assert not await first.lead()

        # The leader's connection dies (as if its process were killed): the server drops the
        # lock with the session, the leader notices at its next look, another one leads.
        async with engines[0].connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
            )
        assert killed == 1
        assert await eventually(first.lead, bool, timeout=10)
        assert not await second.lead()
        assert not second.leading
    finally:
        await first.resign()
        await second.resign()
        for engine in engines:
            await engine.dispose()


async def test_only_the_elected_refresher_publishes_and_the_other_follows_within_a_poll(
    database: DatabaseSettings,
) -> None:
    now = datetime.now(UTC)
    engines = [create_engine(database), create_engine(database)]
    refreshers = [refresher(e, Leadership(e, recheck_s=0.0)) for e in engines]
    published = [r.published for r in refreshers]
    tasks: list[asyncio.Task[None]] = []
    try:
        await seed_customers(engines[0], now)
        tasks.append(asyncio.create_task(refreshers[0].run()))
        await eventually(lambda: _noop(published[0]), lambda p: len(p) >= 1, timeout=20)
        tasks.append(asyncio.create_task(refreshers[1].run()))
        # A few rounds: the first one keeps the lead and rebuilds every 0.5 s; the second
        # never rebuilds and holds, within a poll, what the first published.
        await eventually(lambda: _noop(published[0]), lambda p: len(p) >= 4, timeout=30)
        assert published[1] == []
        latest = published[0][-1]
        await eventually(
            lambda: _noop(refreshers[1].classifier.population.stats),
            lambda s: s is not None and s.version >= latest,
            timeout=5,
        )
        assert published[0] == sorted(set(published[0]))

        # The leader stops (and resigns, as the bootstrap does): the other takes over and goes
        # on numbering after the last version.
        refreshers[0].stop()
        await tasks[0]
        assert refreshers[0].leadership is not None
        await refreshers[0].leadership.resign()
        before = max(published[0])
        began = time.monotonic()
        await eventually(lambda: _noop(published[1]), lambda p: len(p) >= 1, timeout=20)
        assert time.monotonic() - began < 10
        assert min(published[1]) > before
        assert not set(published[0]) & set(published[1])
    finally:
        for r in refreshers:
            r.stop()
        for task in tasks:
            await task
        for r in refreshers:
            assert r.leadership is not None
            await r.leadership.resign()
        for engine in engines:
            await engine.dispose()


async def test_racing_churn_publications_leave_one_current_model_and_every_process_loads_it(
    database: DatabaseSettings,
) -> None:
    now = datetime.now(UTC)
    engines = [create_engine(database), create_engine(database)]
    models = [synthetic_model(seed) for seed in (1, 2)]
    holders = [ChurnModelHolder(), ChurnModelHolder()]
    stopping = asyncio.Event()
    # Followers only (another process leads): a fit is never due for them.
    absent = [Leadership(e) for e in engines]
    blocker_engine = create_engine(database)
    blocker = Leadership(blocker_engine)
    loops: list[asyncio.Task[None]] = []
    try:
        assert await blocker.lead()
        loops = [
            asyncio.create_task(
                churn_store.model_loop(
                    engine,
                    WallClock(),
                    holder,
                    schedule=FitSchedule(every_s=0.1, reload_s=0.2),
                    stopping=stopping,
                    leadership=lead,
                )
            )
            for engine, holder, lead in zip(engines, holders, absent, strict=True)
        ]
        # Both publish at once, a few times over: serialized, never two current, no error.
        await asyncio.gather(
            *(
                churn_store.publish_model(
                    engines[i % 2], models[i % 2], now, churn_store.describe(models[i % 2], 1.0)
                )
                for i in range(6)
            )
        )
        async with engines[0].connect() as conn:
            current = await conn.scalar(
                select(func.count()).select_from(churn_models).where(churn_models.c.is_current)
            )
            stored = await conn.scalar(select(func.count()).select_from(churn_models))
        assert current == 1
        assert stored == 2  # one row per content-addressed version
        winner = await churn_store.published(engines[0])
        assert winner is not None
        # Both followers load the current one within a poll or two.
        await eventually(
            lambda: _noop([h.model.version if h.model else None for h in holders]),
            lambda vs: vs == [winner.version, winner.version],
            timeout=5,
        )
        # A new publication reaches them as quickly.
        other = next(m for m in models if m.version != winner.version)
        await churn_store.publish_model(engines[1], other, now, churn_store.describe(other, 1.0))
        began = time.monotonic()
        await eventually(
            lambda: _noop([h.model.version if h.model else None for h in holders]),
            lambda vs: vs == [other.version, other.version],
            timeout=5,
        )
        assert time.monotonic() - began < 3
        # Neither follower fitted (the blocker leads and fits nothing).
        async with engines[0].connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(churn_models)) == 2
    finally:
        stopping.set()
        for task in loops:
            await task
        await blocker.resign()
        for lead in absent:
            await lead.resign()
        for engine in [*engines, blocker_engine]:
            await engine.dispose()


async def _noop(value: T) -> T:
    return value
