"""Change history on a real PostgreSQL, one row per record (migration 0020): a history stored one
row per dimension change becomes one row per record and reads back through
`classification_changes` (now a view) as it was, the downgrade gives the old table back with
the same rows, and a change id is still recorded once, ever."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import database_at
from tests.support import Servers
from tierflow_classifier.adapters import queries
from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.domain.change_ids import change_id
from tierflow_classifier.domain.model import Assignment, Change
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import alembic_config, upgrade_head_async
from tierflow_common.settings import DatabaseSettings

AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
COLUMNS = (
    "change_id, customer_id, dimension, from_label, to_label, reason, explanation, cause, "
    "effective_at, rule_set_version"
)
# A first purchase's two changes (one record), a later change of the same customer, another
# customer's change.
ROWS: list[dict[str, Any]] = [
    {"id": "a1", "c": "c-1", "d": "value_tier", "f": None, "t": "regular", "why": '{"m": 1}',
     "cause": "event:shop/1", "at": AT},
    {"id": "a2", "c": "c-1", "d": "lifecycle", "f": None, "t": "new", "why": "{}",
     "cause": "event:shop/1", "at": AT},
    {"id": "b1", "c": "c-1", "d": "value_tier", "f": "regular", "t": "VIP", "why": "{}",
     "cause": "event:shop/2", "at": AT + timedelta(days=3)},
    {"id": "z1", "c": "c-2", "d": "value_tier", "f": None, "t": "regular", "why": "{}",
     "cause": "event:shop/9", "at": AT},
]  # fmt: skip


async def history_rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f"SELECT {COLUMNS} FROM classification_changes ORDER BY change_id")
        )
        return [tuple(r) for r in rows]


async def test_history_rows_become_records_and_read_back_the_same(servers: Servers) -> None:
    database = await database_at(servers, "0019_delivery_fillfactor")
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            for r in ROWS:
                await conn.execute(
                    text(
                        f"INSERT INTO classification_changes ({COLUMNS}) VALUES (:id, :c, :d, "
                        ":f, :t, 'because', CAST(:why AS jsonb), :cause, :at, 'v1')"
                    ),
                    r,
                )
        before = await history_rows(engine)
        assert len(before) == 4
        await upgrade_head_async(database)
        assert await history_rows(engine) == before
        async with engine.connect() as conn:
            stored = await conn.scalar(text("SELECT count(*) FROM classification_records"))
            assert stored == 3  # a1 and a2 are one record
            page = await queries.history(
                conn, "c-1", dimension="value_tier", since=None, until=None, limit=10, after=None
            )
            assert [(c["change_id"], c["to"]) for c in page] == [("a1", "regular"), ("b1", "VIP")]
            assert page[0]["explanation"] == {"m": 1}
        await asyncio.to_thread(
            command.downgrade, alembic_config(database), "0019_delivery_fillfactor"
        )
        assert await history_rows(engine) == before
    finally:
        await engine.dispose()


def change(dimension: str, to: str) -> Change:
    return Change(
        customer_id="c-1",
        dimension=dimension,
        from_label=None,
        to=Assignment(to, AT, f"{dimension}.r", "because", {"spend": "12.50"}, "v1"),
        cause="rules:v7",
        effective_at=AT,
    )


async def test_a_change_id_is_recorded_once_across_transactions(database: DatabaseSettings) -> None:
    """The same cause moving a customer again at the same instant (another dimension, a later
    transaction) records only the new change, as its own row; a repeat records nothing."""
    engine = create_engine(database)
    tier, life, rfm = change("value_tier", "VIP"), change("lifecycle", "new"), change("rfm", "x")
    ids = {c.dimension: change_id(c) for c in (tier, life, rfm)}
    try:
        rounds = [[tier, life], [tier, rfm], [rfm, tier, life]]
        recorded = []
        for changes in rounds:
            async with engine.begin() as conn:
                got = await repo.record_changes(conn, [(change_id(c), c) for c in changes])
                recorded.append({cid for r in got for cid, _ in r.items})
        assert recorded == [{ids["value_tier"], ids["lifecycle"]}, {ids["rfm"]}, set()]
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM classification_records")) == 2
            page = await queries.history(
                conn, "c-1", dimension=None, since=None, until=None, limit=10, after=None
            )
        assert sorted(c["change_id"] for c in page) == sorted(ids.values())
        assert {c["dimension"]: c["explanation"] for c in page}["rfm"] == {"spend": "12.50"}
    finally:
        await engine.dispose()
