"""Distribution snapshots on a real PostgreSQL: one writer across processes (the elected one),
spaced by the latest stored snapshot, old ones dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.integration.helpers import classifier_client, eventually
from tests.integration.test_console_classifier import RULES
from tierflow_classifier.adapters.leadership import Leadership
from tierflow_classifier.service_layer.distribution_snapshots import DistributionSnapshots
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import distribution_snapshots
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration


async def test_one_process_takes_the_snapshots_at_their_spacing(
    database: DatabaseSettings,
) -> None:
    engine = create_engine(database)
    # Every look asks the database (no 0.5 s memo), as two processes a while apart would.
    first, second = Leadership(engine, recheck_s=0), Leadership(engine, recheck_s=0)
    try:
        a, b = (
            DistributionSnapshots(
                engine, lambda: RULES, leader, every_s=60, keep=timedelta(minutes=10)
            )
            for leader in (first, second)
        )
        t = datetime.now(UTC)
        # Both look at once: the elected one writes, the other does not lead.
        assert [await a.tick(t), await b.tick(t)] == [True, False]
        # Not due yet, whoever leads: the spacing is the stored snapshot's.
        await first.resign()
        assert await b.tick(t + timedelta(seconds=30)) is False
        assert second.leading
        assert await b.tick(t + timedelta(seconds=61)) is True
        # Past the retention, old snapshots go.
        assert await b.tick(t + timedelta(minutes=11)) is True
        async with engine.connect() as conn:
            kept = (
                await conn.execute(
                    select(distribution_snapshots).order_by(distribution_snapshots.c.at)
                )
            ).all()
        assert [r.at for r in kept] == [t + timedelta(seconds=61), t + timedelta(minutes=11)]
        # No customers yet: every dimension of the rule set, none with a count.
        assert kept[-1].dimensions == {d.name: {} for d in RULES.dimensions}
    finally:
        await first.resign()
        await second.resign()
        await engine.dispose()


async def test_a_stopped_classifier_leaves_the_lead_to_the_next_one(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    async with classifier_client(
        kafka_settings, database, topics, distribution_snapshot_s=0.2
    ) as client:
        await eventually(
            lambda: client.get("/v1/stats/distribution/history"),
            lambda r: len(r.json()["snapshots"]) >= 2,
            what="snapshots taken",
        )
    engine = create_engine(database)
    successor = Leadership(engine, recheck_s=0)
    try:
        assert await successor.lead()
    finally:
        await successor.resign()
        await engine.dispose()
