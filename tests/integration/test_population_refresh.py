"""RFM and ABC against the real broker and PostgreSQL: a replay-mode classifier ends with every
customer scored against the population as of the final watermark, however fast the replay ran;
in production (wall clock) a new population scores the customers classified before it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from tests.integration.helpers import classifier_client, eventually, produce, purchase_event
from tests.support import ROOT
from tierflow_classifier.adapters import population_store, repository
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.classify import Outside, variables_at
from tierflow_classifier.domain.population import population_dimensions
from tierflow_classifier.domain.rules import decide
from tierflow_common.contract import EmittedEvent
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import customers
from tierflow_common.settings import (
    ConsumerSettings,
    DatabaseSettings,
    KafkaSettings,
    TopicSettings,
)

pytestmark = pytest.mark.integration

RULES = load_rules(ROOT / "config" / "classifier.yaml")
CUSTOMERS = [f"c-{i:02d}" for i in range(36)]
SCORED = ("abc", "rfm")


@asynccontextmanager
async def classifier(
    kafka: KafkaSettings, database: DatabaseSettings, topics: TopicSettings, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    consumer = ConsumerSettings(max_batch=20)
    async with classifier_client(
        kafka, database, topics, consumer=consumer, population_poll_s=0.2, **settings
    ) as client:
        yield client


def history_log(start: datetime) -> tuple[list[EmittedEvent], dict[str, int]]:
    """Customer i buys (i % 6) + 1 times, every 9 + i days, amounts growing with i; then every
    customer visits on the last day, so every partition's watermark reaches it."""
    events: list[EmittedEvent] = []
    counts: dict[str, int] = {}
    for i, cid in enumerate(CUSTOMERS):
        counts[cid] = i % 6 + 1
        for n in range(counts[cid]):
            t = start + timedelta(days=i + n * (9 + i))
            events.append(purchase_event(f"{cid}-o{n}", cid, f"{10 * (i + 1)}.50", time=t))
    last = max(e.time for e in events) + timedelta(days=3)
    for cid in CUSTOMERS:
        events.append(
            EmittedEvent(
                id=f"{cid}-visit",
                type="interaction",
                source="shop",
                subject=cid,
                time=last,
                data={"kind": "visit"},
            )
        )
    return sorted(events, key=lambda e: e.time), counts


async def labels(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cid in CUSTOMERS:
        resp = await client.get(f"/v1/customers/{cid}")
        if resp.status_code == 200:
            out[cid] = resp.json()
    return out


def all_scored(expected: dict[str, int]) -> Callable[[dict[str, dict[str, Any]]], bool]:
    def done(found: dict[str, dict[str, Any]]) -> bool:
        return len(found) == len(expected) and all(
            body["features"]["purchases_lifetime"] == expected[cid]
            and all(body["dimensions"][d]["label"] != "unscored" for d in SCORED)
            for cid, body in found.items()
        )

    return done


async def test_a_replay_ends_with_rfm_and_abc_scored_against_the_final_population(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    events, counts = history_log(datetime(2020, 1, 1, 12, tzinfo=UTC))
    final_watermark = events[-1].time
    engine = create_engine(database)
    try:
        async with classifier(
            kafka_settings,
            database,
            topics,
            clock="event_time",
            population_refresh_event_days=14.0,
            population_settle_s=1.0,
        ) as client:
            await produce(kafka_settings, topics.customer_events, events)

            async def settled() -> tuple[Any, ...]:
                stats, progress = await population_store.load_with_progress(engine)
                async with engine.connect() as conn:
                    watermark = await repository.read_watermark(conn)
                    due = await conn.scalar(
                        select(func.count())
                        .select_from(customers)
                        .where(customers.c.next_review_at <= final_watermark)
                    )
                return watermark, stats, progress, due

            _, stats, _, _ = await eventually(
                settled,
                lambda s: (
                    s[0] == final_watermark
                    and s[1] is not None
                    and s[1].computed_at == final_watermark
                    and s[2] is not None
                    and s[2].done
                    and s[3] == 0
                ),
                timeout=60,
            )
            found = await eventually(lambda: labels(client), all_scored(counts), timeout=30)

            # Every RFM and ABC label is the one the final population gives at the final
            # watermark, and each customer's explanation names that population.
            assert stats is not None
            assert stats.customers == len(CUSTOMERS)
            async with engine.connect() as conn:
                for cid, body in found.items():
                    state = await repository.get_state(conn, cid)
                    assert state is not None
                    variables, _, context = variables_at(
                        state, RULES, final_watermark, Outside(stats)
                    )
                    for dim in population_dimensions(RULES):
                        want = decide(dim, variables, context).label
                        assert body["dimensions"][dim.name]["label"] == want, (cid, dim.name)
            distinct = {body["dimensions"]["rfm"]["label"] for body in found.values()}
            assert len(distinct) >= 3  # quintiles spread the customers over segments
            assert {body["dimensions"]["abc"]["label"] for body in found.values()} >= {"A", "C"}

            # Customers classified before the population existed were re-classified by it.
            causes = set()
            for cid in CUSTOMERS:
                resp = await client.get(f"/v1/customers/{cid}/history", params={"dimension": "rfm"})
                assert resp.status_code == 200, resp.text
                causes |= {c["cause"].split(":")[0] for c in resp.json()["changes"]}
            assert "population" in causes
    finally:
        await engine.dispose()


async def test_an_interrupted_sweep_resumes_after_a_restart(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    events, counts = history_log(datetime(2020, 1, 1, 12, tzinfo=UTC))
    final_watermark = events[-1].time
    engine = create_engine(database)
    replay: dict[str, Any] = {"clock": "event_time", "population_settle_s": 1.0}
    try:
        async with classifier(kafka_settings, database, topics, **replay) as client:
            await produce(kafka_settings, topics.customer_events, events)
            await eventually(lambda: labels(client), all_scored(counts), timeout=60)

            async def swept() -> tuple[Any, ...]:
                return await population_store.load_with_progress(engine)

            stats, _ = await eventually(
                swept,
                lambda s: (
                    s[0] is not None
                    and s[0].computed_at == final_watermark
                    and s[1] is not None
                    and s[1].done
                ),
                timeout=60,
            )
        # Stopped as if mid-sweep: nobody re-evaluated against the population yet, RFM and ABC
        # still as before it.
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE population_stats SET payload = payload"
                    ' || \'{"sweep_after": "", "sweep_done": false}\'::jsonb'
                )
            )
            await conn.execute(
                text(
                    "UPDATE customers SET dimensions = jsonb_set(jsonb_set(dimensions,"
                    " '{rfm,label}', '\"unscored\"'), '{abc,label}', '\"unscored\"')"
                )
            )
        async with classifier(kafka_settings, database, topics, **replay) as client:
            found = await eventually(lambda: labels(client), all_scored(counts), timeout=60)
            after, progress = await population_store.load_with_progress(engine)
        assert after == stats  # resumed the sweep; no new population
        assert progress is not None
        assert progress.done
        async with engine.connect() as conn:
            for cid, body in found.items():
                state = await repository.get_state(conn, cid)
                assert state is not None
                variables, _, context = variables_at(state, RULES, final_watermark, Outside(stats))
                for dim in population_dimensions(RULES):
                    want = decide(dim, variables, context).label
                    assert body["dimensions"][dim.name]["label"] == want, (cid, dim.name)
    finally:
        await engine.dispose()


async def test_in_production_a_new_population_scores_customers_classified_before_it(
    kafka_settings: KafkaSettings, database: DatabaseSettings, topics: TopicSettings
) -> None:
    now = datetime.now(UTC)
    counts = {cid: 1 for cid in CUSTOMERS}
    events = [
        purchase_event(f"{cid}-o0", cid, f"{10 * (i + 1)}", time=now - timedelta(days=i + 1))
        for i, cid in enumerate(CUSTOMERS)
    ]
    async with classifier(
        kafka_settings, database, topics, clock="wall", population_refresh_s=1.0
    ) as client:
        await produce(kafka_settings, topics.customer_events, events)
        found = await eventually(lambda: labels(client), all_scored(counts), timeout=60)
    assert {body["dimensions"]["abc"]["label"] for body in found.values()} >= {"A", "C"}
    assert all("+pop" in body["dimensions"]["rfm"]["rule_set_version"] for body in found.values())
