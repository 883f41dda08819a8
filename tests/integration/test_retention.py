"""Retention on the real PostgreSQL: each service's pruning job deletes what outlived its
setting — in batches, skipping rows another transaction holds instead of waiting for them —
and nothing that is still pending: open tasks, actions with a delivery pending or dead."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import ROOT
from tierflow_classifier.adapters.retention import retention_rules as classifier_rules
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.db.engine import create_engine
from tierflow_common.db.pruning import Pruner
from tierflow_common.settings import DatabaseSettings
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.adapters.retention import RetentionTooShort
from tierflow_notifier.adapters.retention import retention_rules as notifier_rules
from tierflow_notifier.settings import NotifierSettings

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
PLAYBOOK = load_playbook(ROOT / "config" / "notifier.yaml")


@pytest.fixture
async def engine(database: DatabaseSettings) -> AsyncIterator[AsyncEngine]:
    e = create_engine(database)
    yield e
    await e.dispose()


def pruned(table: str) -> float:
    return REGISTRY.get_sample_value("tierflow_rows_pruned_total", {"table": table}) or 0.0


async def ids(engine: AsyncEngine, table: str, column: str) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(text(f"SELECT {column} FROM {table}"))).scalars())


async def add_changes(
    engine: AsyncEngine, recorded: dict[str, datetime], dimensions: tuple[str, ...] = ("tier",)
) -> None:
    """One history row (a record) per id, holding a change of each of `dimensions`; the
    change ids are the record id, suffixed past the first."""
    async with engine.begin() as conn:
        for record, at in recorded.items():
            changes: list[dict[str, object]] = [
                {
                    "change_id": record if n == 0 else f"{record}-{n}",
                    "dimension": dimension,
                    "from": None,
                    "to": "regular",
                    "reason": "r",
                    "explanation": {},
                    "rule_set_version": "v1",
                }
                for n, dimension in enumerate(dimensions)
            ]
            await conn.execute(
                text(
                    "INSERT INTO classification_records (record_id, customer_id, cause, "
                    "effective_at, changes, recorded_at) VALUES (:id, 'c-1', 'event:shop/1', "
                    ":at, CAST(:changes AS jsonb), :at)"
                ),
                {"id": record, "at": at, "changes": json.dumps(changes)},
            )


async def test_change_history_past_its_retention_is_pruned_in_batches(
    engine: AsyncEngine,
) -> None:
    old = {f"old-{i}": OLD + timedelta(minutes=i) for i in range(7)}
    await add_changes(engine, {**old, "recent": NOW - timedelta(days=1)})
    before = pruned("classification_changes")
    pruner = Pruner(
        engine, classifier_rules(ClassifierSettings(change_retention_days=365)), batch=3
    )
    assert await pruner.prune() == {"classification_changes": 7}
    assert await ids(engine, "classification_changes", "change_id") == {"recent"}
    assert pruned("classification_changes") - before == 7
    assert await pruner.prune() == {}


async def test_pruning_counts_every_change_of_a_history_row(engine: AsyncEngine) -> None:
    """A first purchase's four changes are one row: pruning it counts the four changes."""
    await add_changes(engine, {"first": OLD}, ("tier", "rfm", "lifecycle", "churn"))
    before = pruned("classification_changes")
    pruner = Pruner(engine, classifier_rules(ClassifierSettings()), batch=10)
    assert await pruner.prune() == {"classification_changes": 4}
    assert pruned("classification_changes") - before == 4
    assert await ids(engine, "classification_changes", "change_id") == set()


async def test_pruning_skips_a_row_another_transaction_holds_instead_of_waiting(
    engine: AsyncEngine,
) -> None:
    await add_changes(engine, {"held": OLD, "free": OLD})
    pruner = Pruner(engine, classifier_rules(ClassifierSettings()), batch=10)
    async with engine.begin() as holder:
        await holder.execute(
            text("SELECT 1 FROM classification_records WHERE record_id = 'held' FOR UPDATE")
        )
        started = time.monotonic()
        assert await asyncio.wait_for(pruner.prune(), timeout=10) == {"classification_changes": 1}
        assert time.monotonic() - started < 5  # under the lock timeout: it never waited
    assert "held" in await ids(engine, "classification_changes", "change_id")
    assert await pruner.prune() == {"classification_changes": 1}  # its turn once released


# (action id, kind, status, created, [delivery states])
ACTIONS = [
    ("done-old", "revisit", "done", OLD, ["delivered"]),
    ("suppressed-old", "coupon", "suppressed", OLD, []),
    ("coupon-delivered-old", "coupon", "open", OLD, ["delivered", "delivered"]),
    ("coupon-pending-old", "coupon", "open", OLD, ["delivered", "pending"]),
    ("done-dead-old", "follow_up", "done", OLD, ["dead"]),
    ("task-open-old", "revisit", "open", OLD, ["delivered"]),
    ("task-acked-old", "escalation", "acked", OLD, []),
    ("done-recent", "revisit", "done", NOW - timedelta(days=10), ["delivered"]),
    ("cancelled-old", "revisit", "cancelled", OLD, ["cancelled", "delivered"]),
]
PRUNED = {"done-old", "suppressed-old", "coupon-delivered-old", "cancelled-old"}


async def add_actions(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for action_id, kind, status, created, states in ACTIONS:
            await conn.execute(
                text(
                    "INSERT INTO care_actions (action_id, trigger_event_id, rule_id, customer_id, "
                    "kind, priority, reason, status, created_at) VALUES "
                    "(:id, :id, 'rule', 'c-1', :kind, 1, 'r', :status, :at)"
                ),
                {"id": action_id, "kind": kind, "status": status, "at": created},
            )
            for i, state in enumerate(states):
                await conn.execute(
                    text(
                        "INSERT INTO care_deliveries (delivery_id, action_id, endpoint, state, "
                        "priority, next_attempt_at) VALUES (:d, :a, :e, :s, 1, :at)"
                    ),
                    {
                        "d": f"{action_id}/{i}",
                        "a": action_id,
                        "e": f"ep{i}",
                        "s": state,
                        "at": created,
                    },
                )
            await conn.execute(
                text(
                    "INSERT INTO contact_ledger (action_id, customer_id, kind, priority_class, at) "
                    "VALUES (:id, 'c-1', :kind, 'marketing', :at)"
                ),
                {"id": action_id, "kind": kind, "at": created},
            )


async def test_only_finished_actions_are_pruned_with_their_deliveries(engine: AsyncEngine) -> None:
    await add_actions(engine)
    before = pruned("care_actions"), pruned("care_deliveries")
    rules = notifier_rules(NotifierSettings(action_retention_days=90), PLAYBOOK)
    got = await Pruner(engine, rules, batch=2).prune()
    assert got == {"care_actions": 4, "care_deliveries": 5, "contact_ledger": 8}
    kept = {a[0] for a in ACTIONS} - PRUNED
    assert await ids(engine, "care_actions", "action_id") == kept
    # Every remaining delivery belongs to a remaining action; none of a pruned one is left.
    assert {d.split("/")[0] for d in await ids(engine, "care_deliveries", "delivery_id")} == {
        a[0] for a in ACTIONS if a[0] in kept and a[4]
    }
    # The ledger keeps only what is younger than its own retention.
    assert await ids(engine, "contact_ledger", "action_id") == {"done-recent"}
    assert (pruned("care_actions") - before[0], pruned("care_deliveries") - before[1]) == (4, 5)


def test_a_contact_ledger_kept_shorter_than_a_cap_window_stops_start_up() -> None:
    with pytest.raises(RetentionTooShort, match="NOTIFIER_CONTACT_LEDGER_RETENTION_DAYS=7"):
        notifier_rules(NotifierSettings(contact_ledger_retention_days=7), PLAYBOOK)
