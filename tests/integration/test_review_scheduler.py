"""The review scheduler against a real PostgreSQL: a new rule-set version re-evaluates every
customer, page by page and throttled, while deadlines that fall due meanwhile still fire
first."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import ROOT
from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.churn_store import ChurnModelHolder
from tierflow_classifier.adapters.clock import WallClock
from tierflow_classifier.adapters.population_store import PopulationHolder
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.scheduler import ReviewScheduler
from tierflow_classifier.service_layer.unit_of_work import SqlUnitOfWork
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import classification_changes, customers
from tierflow_common.settings import DatabaseSettings, TopicSettings

pytestmark = pytest.mark.integration

RULES = load_rules(ROOT / "config" / "classifier.yaml")


def bought(cid: str, at: datetime, version: str) -> CustomerState:
    meta = EventMeta("shop", f"{cid}-o1", cid, at)
    state, _ = apply(None, Purchase(meta, f"{cid}-o1", Decimal("30"), "USD"), RULES, at=at)
    return dataclasses.replace(state, rule_set_version=version)


def just_due(now: datetime) -> CustomerState:
    """A customer on the current version whose onboarding ended a second ago."""
    onboarding = timedelta(days=float(RULES.params.get("onboarding_days", 30)))
    return bought("due-1", now - onboarding - timedelta(seconds=1), RULES.version)


def scheduler_for(engine: AsyncEngine, reevaluate_per_s: float) -> ReviewScheduler:
    """Re-evaluates 4 customers a round."""
    return ReviewScheduler(
        lambda: SqlUnitOfWork(engine),
        classifier=Classifier(RULES, PopulationHolder(), ChurnModelHolder()),
        topics=TopicSettings(),
        clock=WallClock(),
        reevaluate_batch=4,
        reevaluate_per_s=reevaluate_per_s,
    )


async def on_older_version(engine: AsyncEngine) -> int | None:
    async with engine.connect() as conn:
        count: int | None = await conn.scalar(
            select(func.count())
            .select_from(customers)
            .where(customers.c.rule_set_version != RULES.version)
        )
    return count


async def test_a_new_version_reaches_every_customer_and_deadlines_fire_first(
    database: DatabaseSettings,
) -> None:
    now = datetime.now(UTC)
    engine = create_engine(database)
    try:
        # 60 customers on an older rule set, none due; then one whose onboarding just ended,
        # on the current version.
        old = [bought(f"c-{i:03d}", now - timedelta(days=1), "older") for i in range(60)]
        due = just_due(now)
        assert due.next_review_at is not None
        assert due.next_review_at <= now
        async with engine.begin() as conn:
            await repo.save_states(conn, [*old, due])
        scheduler = scheduler_for(engine, reevaluate_per_s=1e6)
        scheduler.SCAN_PAGE = 7
        scheduler.SCAN_ROUND = 14

        # The first round serves the deadline, not the re-evaluation.
        assert await scheduler.tick() == 1
        async with engine.connect() as conn:
            fired = await conn.scalar(
                select(func.count())
                .select_from(classification_changes)
                .where(classification_changes.c.customer_id == "due-1")
                .where(classification_changes.c.cause.like("time:%"))
            )
        assert fired == 1
        assert await on_older_version(engine) == 60

        # Then the pass walks every page: at most 4 customers a round, until none is left.
        rounds = 0
        while (handled := await scheduler.tick()) or scheduler._pass_version is not None:
            assert handled <= 4
            rounds += 1
            assert rounds < 100
        async with engine.connect() as conn:
            rows = await conn.execute(select(customers.c.customer_id, customers.c.rule_set_version))
            versions = {cid: version for cid, version in rows}
        assert set(versions.values()) == {RULES.version}
        assert len(versions) == 61
        assert rounds >= 60 // 4
    finally:
        await engine.dispose()


async def test_the_re_evaluation_is_throttled_but_deadlines_are_not(
    database: DatabaseSettings,
) -> None:
    now = datetime.now(UTC)
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            await repo.save_states(
                conn, [bought(f"c-{i:03d}", now - timedelta(days=1), "older") for i in range(8)]
            )
        # 4 customers a round at 0.01 customers/s: after one round the next waits 400 s.
        scheduler = scheduler_for(engine, reevaluate_per_s=0.01)
        assert await scheduler.tick() == 4
        assert await scheduler.tick() == 0  # throttled
        # A deadline falling due meanwhile is served at once.
        async with engine.begin() as conn:
            await repo.save_states(conn, [just_due(now)])
        assert await scheduler.tick() == 1
        assert await on_older_version(engine) == 4
    finally:
        await engine.dispose()
