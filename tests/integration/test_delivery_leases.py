"""A claim's lease is written in place on the real PostgreSQL: care_deliveries keeps room on its
pages (migration 0019), so leasing a batch of fresh deliveries writes (almost) no index entry —
the claim was a third of the notifier's database time when every lease went to all five of
the table's indexes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings
from tierflow_notifier.adapters import repository
from tierflow_notifier.settings import NotifierSettings

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


@pytest.fixture
async def engine(database: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    e = create_engine(database)
    yield e
    await e.dispose()


async def add_pending(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO care_actions (action_id, trigger_event_id, rule_id, customer_id,"
                " kind, priority, reason, status, created_at)"
                " SELECT 'a-' || i, 'a-' || i, 'rule', 'c-' || i, 'coupon', 1, 'r', 'open', :at"
                " FROM generate_series(1, :n) AS i"
            ),
            {"n": n, "at": NOW},
        )
        await repository.insert_deliveries(
            conn,
            [
                repository.delivery_row(f"a-{i}", "ep", 1, NOW - timedelta(seconds=1))
                for i in range(1, n + 1)
            ],
        )


STATS = text(
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
    " WHERE relname = 'care_deliveries'"
)


async def test_leasing_a_batch_of_new_deliveries_is_mostly_in_place(engine: AsyncEngine) -> None:
    batch = NotifierSettings().delivery_batch
    await add_pending(engine, 3 * batch)
    for _ in range(3):
        async with engine.begin() as conn:
            # The connection's counts not yet flushed to the cumulative view (at most once a
            # second, between transactions): before and after the claim, within its transaction.
            updated0, in_place0 = (await conn.execute(STATS)).one()
            claimed = await repository.claim_deliveries(
                conn, "ep", now=NOW, lease_until=NOW + timedelta(minutes=1), limit=batch
            )
            updated, in_place = (await conn.execute(STATS)).one()
        assert len(claimed) == updated - updated0 == batch
        # At the default fill factor: none (every page packed full by the inserts).
        assert in_place - in_place0 >= 0.9 * batch
