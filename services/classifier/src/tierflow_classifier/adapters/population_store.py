"""Builds the population statistics from quantile sketches (Apache DataSketches KLL: mergeable,
small, error-bounded) over one streaming pass of the customers table, and keeps them in
PostgreSQL with the progress of the re-evaluation sweep that follows each new version
(service_layer/population_refresh.py decides when to rebuild and runs the sweep). Never per
event.

Versions: one row, 'current', replaced by each publication in one statement that numbers the
new version after the one it replaces (`publish`), so two publishers racing — two processes,
or a leader that lost the lead mid-rebuild — never get the same version, and statistics as of
an earlier instant never replace later ones. Every process polls `published_version` (one
primary-key read) to load a new version within a poll."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import datasketches
import structlog
from sqlalchemy import bindparam, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnClause

from tierflow_classifier.domain.customer_features import CustomerFeatures, decode_member
from tierflow_classifier.domain.features import DAY_S, window_sums
from tierflow_classifier.domain.model import Assignment, CustomerState
from tierflow_classifier.domain.population import PopulationStats, abc_thresholds
from tierflow_classifier.domain.rules import RuleSet
from tierflow_common.db.tables import customers

log = structlog.get_logger(__name__)
# KLL's largest accuracy parameter: a sketch holds every value up to 65,535 customers, so the
# statistics are exact (and a replay's are reproducible) there; beyond, the normalized rank
# error is ~0.005% (~1.3 MB for all three sketches at 1,000,000 customers).
_K = 65_535
_QUINTILES = [0.2, 0.4, 0.6, 0.8]
_LORENZ = [i / 1000 for i in range(1, 1000)]


class PopulationHolder:
    """The latest statistics, shared by the consumer and the scheduler in this process."""

    def __init__(self) -> None:
        self.stats: PopulationStats | None = None


@dataclass(frozen=True)
class SweepProgress:
    """How far the re-evaluation after population `version` got: every customer id up to
    `after` (in id order) is done; `done` once the last one is."""

    version: int
    after: str = ""
    done: bool = False


async def load_latest(engine: AsyncEngine) -> PopulationStats | None:
    return (await load_with_progress(engine))[0]


async def load_with_progress(
    engine: AsyncEngine,
) -> tuple[PopulationStats | None, SweepProgress | None]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT payload FROM population_stats WHERE name = 'current'"))
        ).first()
    if row is None:
        return None, None
    p = row.payload
    stats = _from_payload(p)
    # Statistics stored before sweeps were tracked count as swept.
    progress = SweepProgress(
        stats.version, str(p.get("sweep_after", "")), bool(p.get("sweep_done", True))
    )
    return stats, progress


async def save_progress(conn: AsyncConnection, progress: SweepProgress) -> bool:
    """Record sweep progress; False if population `progress.version` is no longer current."""
    patch = {"sweep_after": progress.after, "sweep_done": progress.done}
    result = await conn.execute(
        text(
            "UPDATE population_stats SET payload = payload || CAST(:patch AS jsonb) "
            "WHERE name = 'current' AND (payload->>'version')::int = :version"
        ),
        {"patch": json.dumps(patch), "version": progress.version},
    )
    return bool(result.rowcount)


_LATEST_SINCE: ColumnClause[Any] = literal_column(
    "(SELECT max((v->>'since')::timestamptz) FROM jsonb_each(customers.dimensions) AS e(k, v))"
)
_NO_SINCE = datetime(1970, 1, 1, tzinfo=UTC)


async def customers_after(conn: AsyncConnection, after: str, limit: int) -> list[str]:
    """The next `limit` customer ids after `after`, in id order, of customers who bought."""
    rows = await conn.execute(
        select(customers.c.customer_id)
        .where(customers.c.customer_id > after, customers.c.purchases_lifetime > 0)
        .order_by(customers.c.customer_id)
        .limit(limit)
    )
    return [r.customer_id for r in rows]


async def try_lock_customers(conn: AsyncConnection, customer_ids: Sequence[str]) -> list[str]:
    """Take, without waiting, the per-customer locks of repository.lock_customers (same keys);
    return the customers locked (the others are in another transaction's batch right now)."""
    rows = await conn.execute(
        text(
            "SELECT x FROM unnest(CAST(:ids AS text[])) AS x"
            " WHERE pg_try_advisory_xact_lock(hashtextextended(x, 0))"
        ),
        {"ids": list(customer_ids)},
    )
    return [r.x for r in rows]


async def outlines(
    conn: AsyncConnection, customer_ids: Sequence[str], dimensions: Sequence[str]
) -> list[CustomerState]:
    """These customers in outline: only what the population dimensions read (monthly buckets,
    last purchase, their labels, the latest instant any label took effect, the review
    deadline, the version). Decoding the whole state of every customer is what made a sweep
    expensive."""
    labels = [
        customers.c.dimensions[d]["label"].astext.label(f"l{i}") for i, d in enumerate(dimensions)
    ]
    rows = await conn.execute(
        select(
            customers.c.customer_id,
            customers.c.purchases_lifetime,
            customers.c.last_purchase_at,
            customers.c.next_review_at,
            customers.c.rule_set_version,
            customers.c.features["months"].astext.label("months"),
            _LATEST_SINCE.label("latest"),
            *labels,
        )
        .where(customers.c.customer_id.in_(bindparam("ids", expanding=True)))
        .order_by(customers.c.customer_id),
        {"ids": list(customer_ids)},
    )
    out: list[CustomerState] = []
    for r in rows:
        since = r.latest or _NO_SINCE
        out.append(
            CustomerState(
                customer_id=r.customer_id,
                purchases_lifetime=r.purchases_lifetime,
                last_purchase_at=r.last_purchase_at,
                next_review_at=r.next_review_at,
                rule_set_version=r.rule_set_version,
                features=CustomerFeatures(months=decode_member("months", r.months)),
                dimensions={
                    d: Assignment(label, since, "", "", {}, "")
                    for i, d in enumerate(dimensions)
                    if (label := r._mapping[f"l{i}"]) is not None
                },
            )
        )
    return out


async def lower_reviews(conn: AsyncConnection, deadlines: list[tuple[str, datetime]]) -> None:
    """Bring review deadlines forward (never back)."""
    if not deadlines:
        return
    await conn.execute(
        text(
            "UPDATE customers AS c SET next_review_at = LEAST(COALESCE(c.next_review_at, m.t), m.t)"
            " FROM unnest(CAST(:ids AS text[]), CAST(:ts AS timestamptz[])) AS m(id, t)"
            " WHERE c.customer_id = m.id"
        ),
        {"ids": [c for c, _ in deadlines], "ts": [t for _, t in deadlines]},
    )


def _from_payload(p: dict[str, Any]) -> PopulationStats:
    return PopulationStats(
        version=int(p["version"]),
        computed_at=datetime.fromisoformat(p["computed_at"]),
        customers=int(p["customers"]),
        recency_cuts=tuple(p["recency_cuts"]),
        frequency_cuts=tuple(p["frequency_cuts"]),
        monetary_cuts=tuple(p["monetary_cuts"]),
        abc_a_min_spend=float(p["abc_a_min_spend"]),
        abc_b_min_spend=float(p["abc_b_min_spend"]),
    )


class Summary:
    """The quantile sketches of one pass over the customers: recency (days), orders and spend
    in the rolling window."""

    def __init__(self) -> None:
        self.recency = datasketches.kll_floats_sketch(_K)
        self.frequency = datasketches.kll_floats_sketch(_K)
        self.monetary = datasketches.kll_floats_sketch(_K)

    def add(self, recency_days: float | None, orders: float, spend: float) -> None:
        if recency_days is not None:
            self.recency.update(recency_days)
        self.frequency.update(orders)
        self.monetary.update(spend)


async def rebuild(
    engine: AsyncEngine, rules: RuleSet, at: datetime, previous: PopulationStats | None = None
) -> PopulationStats | None:
    """Build the statistics as of `at` from the customers table and publish them; None if
    there is no customer who bought yet, or a population as of a later instant is already
    published. (`previous` is unused: the store numbers the versions.)"""
    summary = Summary()
    # The same window as the customers' own features (domain/features.py).
    window = int(rules.params.get("window_months", 12))
    async with engine.connect() as conn:
        # Only what the statistics read: the monthly buckets and the last purchase.
        result = await conn.stream(
            select(
                customers.c.last_purchase_at, customers.c.features["months"].astext.label("months")
            )
            .where(customers.c.purchases_lifetime > 0)
            .execution_options(yield_per=5_000)
        )
        async for last_purchase_at, months in result:
            spend, orders, _ = window_sums(decode_member("months", months), at, window)
            # A partition ahead of the replay watermark may hold later purchases: recency 0.
            recency = (
                max((at - last_purchase_at).total_seconds() / DAY_S, 0.0)
                if last_purchase_at is not None
                else None
            )
            summary.add(recency, float(orders), float(spend))
    return await publish(engine, rules, at, summary)


# One statement numbers and publishes a version: the row lock of the single 'current' row
# serializes two publishers, each gets the version after the one it replaces, and a
# population as of an earlier instant never replaces a later one (a leader that lost the
# lead mid-rebuild, a stray manual run).
_PUBLISH = text(
    """
    INSERT INTO population_stats AS p (name, payload, recency, frequency, monetary, updated_at)
    VALUES ('current', CAST(:payload AS jsonb) || '{"version": 1}'::jsonb,
            :recency, :frequency, :monetary, now())
    ON CONFLICT (name) DO UPDATE SET
      payload = EXCLUDED.payload
        || jsonb_build_object('version', (p.payload->>'version')::int + 1),
      recency = EXCLUDED.recency,
      frequency = EXCLUDED.frequency,
      monetary = EXCLUDED.monetary,
      updated_at = now()
    WHERE (p.payload->>'computed_at')::timestamptz
          <= (EXCLUDED.payload->>'computed_at')::timestamptz
    RETURNING (payload->>'version')::int AS version
    """
)


async def publish(
    engine: AsyncEngine, rules: RuleSet, at: datetime, summary: Summary
) -> PopulationStats | None:
    """Turn `summary` into statistics as of `at` and publish them as the next version (ids
    never collide: the database numbers them); None if `summary` is empty or a population as
    of a later instant is already published."""
    recency, frequency, monetary = summary.recency, summary.frequency, summary.monetary
    if monetary.is_empty():
        return None
    a_min, b_min = abc_thresholds(
        monetary.get_quantiles(_LORENZ),
        float(rules.params.get("abc_a_share", 0.8)),
        float(rules.params.get("abc_b_share", 0.15)),
    )
    unnumbered = PopulationStats(
        version=0,
        computed_at=at,
        customers=monetary.n,
        recency_cuts=(
            tuple(float(x) for x in recency.get_quantiles(_QUINTILES))
            if not recency.is_empty()
            else (0.0,) * len(_QUINTILES)
        ),
        frequency_cuts=tuple(float(x) for x in frequency.get_quantiles(_QUINTILES)),
        monetary_cuts=tuple(float(x) for x in monetary.get_quantiles(_QUINTILES)),
        abc_a_min_spend=a_min,
        abc_b_min_spend=b_min,
    )
    payload = {
        "computed_at": at.isoformat(),
        "customers": unnumbered.customers,
        "recency_cuts": list(unnumbered.recency_cuts),
        "frequency_cuts": list(unnumbered.frequency_cuts),
        "monetary_cuts": list(unnumbered.monetary_cuts),
        "abc_a_min_spend": a_min,
        "abc_b_min_spend": b_min,
        # The customers to re-evaluate against this version have not been swept yet.
        "sweep_after": "",
        "sweep_done": False,
    }
    async with engine.begin() as conn:
        version = await conn.scalar(
            _PUBLISH,
            {
                "payload": json.dumps(payload),
                "recency": recency.serialize(),
                "frequency": frequency.serialize(),
                "monetary": monetary.serialize(),
            },
        )
    if version is None:
        log.info("population_superseded", computed_at=at.isoformat())
        return None
    stats = replace(unnumbered, version=int(version))
    log.info("population_refreshed", version=stats.version, customers=stats.customers)
    return stats


async def published_version(engine: AsyncEngine) -> int | None:
    """The version of the published population (one indexed read: cheap to poll)."""
    async with engine.connect() as conn:
        version = await conn.scalar(
            text("SELECT (payload->>'version')::int FROM population_stats WHERE name = 'current'")
        )
    return None if version is None else int(version)
