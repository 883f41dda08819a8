"""Saving a customer loaded in the same transaction sends only the assignments that changed
(merged into the stored object): on the real PostgreSQL the row then holds exactly what a
full write of the state would, including after an erasure earlier in the same transaction,
and a state that dropped an assignment is refused rather than merged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import ROOT
from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.classify import classify
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase, evolve
from tierflow_classifier.service_layer.unit_of_work import SqlUnitOfWork
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import customers
from tierflow_common.settings import DatabaseSettings

pytestmark = pytest.mark.integration

RULES = load_rules(ROOT / "config" / "classifier.yaml")
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def bought(state: CustomerState | None, cid: str, n: int, amount: str) -> CustomerState:
    at = T0 + timedelta(days=n)
    event = Purchase(EventMeta("shop", f"{cid}-{n}", cid, at), f"o{n}", Decimal(amount), "USD")
    new, _ = apply(state, event, RULES, at=at)
    return new


async def stored_dimensions(engine: AsyncEngine, cid: str) -> dict[str, object]:
    async with engine.connect() as conn:
        value = await conn.scalar(
            select(customers.c.dimensions).where(customers.c.customer_id == cid)
        )
    assert isinstance(value, dict)
    return value


def as_row(state: CustomerState) -> list[object]:
    """The row a full write stores, its JSON columns decoded (PostgreSQL orders keys)."""
    row: list[object] = list(repo.state_record(state))
    for i in (5, 6, 13):
        row[i] = orjson.loads(str(row[i]))
    return row


def as_written(state: CustomerState) -> dict[str, object]:
    """What a full write of the state stores as `dimensions`."""
    return dict(orjson.loads(repo._dimensions_json(state)))


async def test_a_loaded_customer_saved_again_holds_what_a_full_write_would(
    database: DatabaseSettings,
) -> None:
    engine = create_engine(database)
    try:
        first = bought(None, "c1", 0, "120.00")
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.lock(["c1"])
            assert await uow.customers.load(["c1"]) == {}
            await uow.customers.save([first])
        assert await stored_dimensions(engine, "c1") == as_written(first)

        # Several purchases, each loaded and saved in its own transaction: a tier moves.
        state = first
        for n, amount in enumerate(("900.00", "4200.00", "30.00"), start=1):
            async with SqlUnitOfWork(engine) as uow:
                await uow.customers.lock(["c1"])
                loaded = (await uow.customers.load(["c1"]))["c1"]
                assert as_row(loaded) == as_row(state)
                state = bought(loaded, "c1", n, amount)
                await uow.customers.save([state])
            assert await stored_dimensions(engine, "c1") == as_written(state)
        assert state.dimensions["value_tier"].label != first.dimensions["value_tier"].label

        # Twice in one transaction, the second time judged later: still the whole state.
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.lock(["c1"])
            loaded = (await uow.customers.load(["c1"]))["c1"]
            once = bought(loaded, "c1", 10, "15.00")
            await uow.customers.save([once])
            twice, _ = classify(once, RULES, at=T0 + timedelta(days=200), cause="time:x")
            await uow.customers.save([twice])
        assert await stored_dimensions(engine, "c1") == as_written(twice)
        async with SqlUnitOfWork(engine) as uow:
            again = (await uow.customers.load(["c1"]))["c1"]
        assert as_row(again) == as_row(twice)
    finally:
        await engine.dispose()


async def test_a_customer_judged_under_a_new_version_keeps_each_assignments_own(
    database: DatabaseSettings,
) -> None:
    """The row leaves out an assignment's version where it is the row's (or the row's plus
    a population suffix). When a save moves the row to another version, the assignments it
    did not change still read back with the version they were judged by, not the new one."""
    engine = create_engine(database)
    try:
        first = bought(None, "c4", 0, "120.00")
        judged = {
            n: evolve(a, rule_set_version=f"{first.rule_set_version}+pop3")
            for n, a in first.dimensions.items()
        }
        first = evolve(first, dimensions=judged)
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.save([first])
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.lock(["c4"])
            loaded = (await uow.customers.load(["c4"]))["c4"]
            assert as_row(loaded) == as_row(first)
            # Another rule set moves one dimension and leaves the others as they were.
            moved = evolve(
                loaded.dimensions["value_tier"], label="vip", rule_set_version="rs_next+pop3"
            )
            later = evolve(
                loaded,
                rule_set_version="rs_next",
                dimensions={**loaded.dimensions, "value_tier": moved},
            )
            await uow.customers.save([later])
        async with SqlUnitOfWork(engine) as uow:
            again = (await uow.customers.load(["c4"]))["c4"]
        assert again.dimensions["lifecycle"].rule_set_version == (f"{first.rule_set_version}+pop3")
        assert again.dimensions["value_tier"].rule_set_version == "rs_next+pop3"
        assert as_row(again) == as_row(later)
    finally:
        await engine.dispose()


async def test_after_an_erasure_in_the_same_transaction_the_new_row_is_whole(
    database: DatabaseSettings,
) -> None:
    engine = create_engine(database)
    try:
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.save([bought(None, "c2", 0, "700.00")])
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.lock(["c2"])
            loaded = (await uow.customers.load(["c2"]))["c2"]
            await uow.customers.save([bought(loaded, "c2", 1, "80.00")])
            # An erasure deletes the row within the transaction (service_layer/erasure.py) ...
            await uow.erasures.erase("c2")
            # ... and the customer's next event starts over from nothing.
            assert await uow.customers.load(["c2"]) == {}
            fresh = bought(None, "c2", 2, "55.00")
            await uow.customers.save([fresh])
        assert await stored_dimensions(engine, "c2") == as_written(fresh)
    finally:
        await engine.dispose()


async def test_a_state_that_dropped_an_assignment_is_refused(database: DatabaseSettings) -> None:
    engine = create_engine(database)
    try:
        async with SqlUnitOfWork(engine) as uow:
            await uow.customers.save([bought(None, "c3", 0, "70.00")])
        async with SqlUnitOfWork(engine) as uow:
            loaded = (await uow.customers.load(["c3"]))["c3"]
            dims = dict(loaded.dimensions)
            dims.pop("lifecycle")
            with pytest.raises(ValueError, match="dropped assignments"):
                await uow.customers.save([evolve(loaded, dimensions=dims)])
    finally:
        await engine.dispose()
