"""Rule sets as versioned data on real PostgreSQL and a real broker: what a simulation says a
candidate would change is exactly what activating it then publishes, without a restart."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import func, select

from tests.integration.helpers import classifier_client, eventually
from tests.support import ROOT, read_to_end
from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.domain.rule_versions import in_rollout
from tierflow_common.auth import Role
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import customers
from tierflow_common.keys import create_key
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration

RULES_TEXT = (ROOT / "config" / "classifier.yaml").read_text()
RULES = load_rules(ROOT / "config" / "classifier.yaml")
# A candidate that lowers the VIP bar.
LOWER_VIP = RULES_TEXT.replace("vip_spend: 5000 ", "vip_spend: 1500 ").replace(
    "vip_orders: 3\n", "vip_orders: 2\n"
)
CUSTOMERS = 240


def shopper(i: int, now: datetime) -> CustomerState:
    """Customer i: 1-4 orders over the last months, spend from ~150 to ~7,000."""
    cid = f"c{i:04d}"
    state: CustomerState | None = None
    orders = 1 + i % 4
    for n in range(orders):
        at = now - timedelta(days=20 * (orders - n)) - timedelta(minutes=i)
        meta = EventMeta("shop", f"{cid}-o{n}", cid, at)
        amount = Decimal(150 + (i * 29) % 1_800)
        state, _ = apply(state, Purchase(meta, f"{cid}-o{n}", amount, "USD"), RULES, at=at)
    assert state is not None
    return state


@pytest.fixture
async def stocked(database: DatabaseSettings) -> str:
    """A database with CUSTOMERS customers judged by the shipped rules, and a key with every
    role (the value)."""
    engine = create_engine(database)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await repo.save_states(conn, [shopper(i, now) for i in range(CUSTOMERS)])
        _, key = await create_key(conn, name="rules-test", roles=[Role.READ, Role.ADMIN])
    await engine.dispose()
    return key


async def on_version(database: DatabaseSettings, version: str) -> int:
    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(customers)
                        .where(customers.c.rule_set_version.startswith(version))
                    )
                ).scalar_one()
            )
    finally:
        await engine.dispose()


async def published_moves(
    kafka: KafkaSettings, topics: TopicSettings, cause_prefix: str
) -> dict[str, Counter[tuple[str, str]]]:
    """Per dimension, (from, to) counts of the changes on customer-classification-changed
    whose cause starts with `cause_prefix`."""
    moves: dict[str, Counter[tuple[str, str]]] = {}
    for record in await read_to_end(kafka, topics.classification_changed):
        data = orjson.loads(record["value"])
        if not data["cause"].startswith(cause_prefix):
            continue
        for change in data["changes"]:
            moves.setdefault(change["dimension"], Counter())[
                (change["from"] or "(none)", change["to"])
            ] += 1
    return moves


def simulated_moves(report: dict[str, object]) -> dict[str, Counter[tuple[str, str]]]:
    out: dict[str, Counter[tuple[str, str]]] = {}
    dimensions = report["dimensions"]
    assert isinstance(dimensions, dict)
    for name, found in dimensions.items():
        for before, row in found["matrix"].items():
            for after, n in row.items():
                if before != after:
                    out.setdefault(name, Counter())[(before, after)] += n
    return out


async def test_simulation_equals_what_activation_publishes(
    stocked: str,
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
) -> None:
    async with classifier_client(kafka_settings, database, topics) as client:
        client.headers["Authorization"] = f"Bearer {stocked}"
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        listed = (await client.get("/v1/rules")).json()
        base = listed["active"]["version"]
        assert base == RULES.version
        assert listed["active"]["activation"] == 1

        typo = "spend_window >= vip_spend"
        bad = await client.post(
            "/v1/rules:validate",
            content=LOWER_VIP.replace(typo, "spend_windw >= vip_spend"),
            headers={"Content-Type": "application/yaml"},
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        (error,) = bad.json()["errors"]
        assert error["field"] == "dimensions.value_tier.rules.0.when"
        assert "spend_windw" in error["reason"]
        before = RULES_TEXT[: RULES_TEXT.index(typo)]
        assert error["line"] == before.count("\n") + 1
        assert error["column"] == len(before) - before.rindex("\n") - 1  # the quote
        ok = await client.post(
            "/v1/rules:validate", content=LOWER_VIP, headers={"Content-Type": "application/yaml"}
        )
        assert ok.status_code == 200
        assert ok.json()["version"] != base

        simulated = await client.post(
            "/v1/rules:simulate", content=LOWER_VIP, headers={"Content-Type": "application/yaml"}
        )
        assert simulated.status_code == 200, simulated.text
        report = simulated.json()
        assert report["base_version"] == base
        assert report["customers"] == CUSTOMERS
        tiers = report["dimensions"]["value_tier"]
        assert tiers["changed"] > 0
        assert sum(n for row in tiers["matrix"].values() for n in row.values()) == CUSTOMERS
        moved_up = sum(row.get("VIP", 0) for f, row in tiers["matrix"].items() if f != "VIP")
        assert moved_up == tiers["changed"]  # lowering the bar only makes VIPs
        # Nothing was written by the simulation.
        assert await on_version(database, base) == CUSTOMERS

        diff = (await client.get(f"/v1/rules/{report['candidate_version']}/diff")).json()
        assert diff["params"] == {
            "vip_orders": {"before": 3.0, "after": 2.0},
            "vip_spend": {"before": 5000.0, "after": 1500.0},
        }
        assert diff["dimensions"] == []

        stale = await client.post(
            "/v1/rules:activate",
            json={"version": report["candidate_version"], "expected_active": "rs_0000"},
        )
        assert stale.status_code == 409
        assert stale.json()["active"] == base

        activated = await client.post(
            "/v1/rules:activate",
            json={
                "version": report["candidate_version"],
                "expected_active": base,
                "note": "lower the VIP bar",
            },
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["activation"] == 2
        # No restart: the running process switches and re-judges everyone.
        await eventually(
            lambda: on_version(database, report["candidate_version"]),
            lambda n: n == CUSTOMERS,
            timeout=30,
        )
        expected = simulated_moves(report)
        cause = f"rule_set_activated:{report['candidate_version']}/2"
        await eventually(
            lambda: published_moves(kafka_settings, topics, cause),
            lambda found: found == expected,
            what="the activation's changes equal to the simulation's",
        )
        listed = (await client.get("/v1/rules")).json()
        statuses = {v["version"]: v["status"] for v in listed["versions"]}
        assert statuses == {base: "retired", report["candidate_version"]: "active"}


async def stock_many(database: DatabaseSettings, count: int) -> None:
    """`count` one-purchase customers (one domain-made state, cloned under distinct ids)."""
    engine = create_engine(database)
    now = datetime.now(UTC)
    template = shopper(1, now)
    try:
        async with engine.begin() as conn:
            for lo in range(0, count, 2_000):
                await repo.save_states(
                    conn,
                    [
                        dataclasses.replace(template, customer_id=f"m{i:05d}")
                        for i in range(lo, min(lo + 2_000, count))
                    ],
                )
    finally:
        await engine.dispose()


async def test_a_canary_reaches_its_share_and_two_processes_both_switch(
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
) -> None:
    count = 10_000
    await stock_many(database, count)
    engine = create_engine(database)
    async with engine.begin() as conn:
        _, key = await create_key(conn, name="rules-canary", roles=[Role.READ, Role.ADMIN])
    await engine.dispose()
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        classifier_client(kafka_settings, database, topics, reevaluate_per_s=50_000.0) as one,
        classifier_client(kafka_settings, database, topics, reevaluate_per_s=50_000.0) as two,
    ):
        one.headers.update(auth)
        two.headers.update(auth)
        higher = RULES_TEXT.replace("important_spend: 1000\n", "important_spend: 1200\n")
        simulated = await one.post(
            "/v1/rules:simulate",
            params={"rollout_percent": 30},
            content=higher,
            headers={"Content-Type": "application/yaml"},
        )
        assert simulated.status_code == 200, simulated.text
        candidate = simulated.json()["candidate_version"]
        activated = await one.post(
            "/v1/rules:activate",
            json={"version": candidate, "expected_active": RULES.version, "rollout_percent": 30},
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["previous"] == RULES.version
        for client in (one, two):  # both processes use it, no restart
            await eventually(
                lambda c=client: c.get("/v1/rules"),  # type: ignore[misc]
                lambda r: r.json()["version"] == candidate,
                timeout=5,
                what="the process to put the activation in force",
            )
        # Exactly the customers the stable hash puts in the share move, and no others.
        share = sum(in_rollout(f"m{i:05d}", 30) for i in range(count))
        assert abs(share / count - 0.30) <= 0.03
        moved = await eventually(
            lambda: on_version(database, candidate),
            lambda n: n == share,
            timeout=30,
            what="the canary share on the candidate",
        )
        rest = await on_version(database, RULES.version)
        assert moved + rest == count
        # Rollback: the previous version for everyone.
        back = await two.post(
            "/v1/rules:activate",
            json={"version": RULES.version, "expected_active": candidate},
        )
        assert back.status_code == 200, back.text
        assert back.json()["previous"] is None
        await eventually(
            lambda: on_version(database, RULES.version),
            lambda n: n == count,
            timeout=30,
            what="every customer back on the previous version",
        )
