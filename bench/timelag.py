"""Time-driven transition lag: how late a review deadline fires with 1,000,000 customers stored.

The customers' state rows are produced by the classifier's own domain code (`apply` of a first
purchase, then the repository's `state_record` encoding) and bulk-loaded with COPY:

- the population (all customers but the due ones): one first purchase a day ago, so their next
  review (onboarding over, new -> active) is 30 days away; cloned under distinct customer ids;
- the due customers: a first purchase 30 days before a deadline that falls in the measured
  window, `per_step` customers per deadline, one deadline every `step_s`, so `due` deadlines are
  spread evenly over `due / per_step * step_s` seconds starting shortly after the classifier is
  ready. Each fires exactly one change (lifecycle new -> active, cause `time:<deadline>`).

Then one classifier process starts on the wall clock, and the runner polls the change history
every 50 ms: a change's lag is from its deadline (`effective_at`) to the poll that first saw it
committed (so the figure includes up to 50 ms of polling), p50 / p99 / max over all due
customers. A due change not seen by the end of the wait counts as infinitely late ("missing").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import numpy as np

from bench.progress import Profile
from bench.stack import ROOT, Scenario, Stack
from tierflow_classifier.adapters import population_store
from tierflow_classifier.adapters.repository import STATE_COLUMNS, state_record
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.domain.rules import RuleSet
from tierflow_common.db.engine import create_engine

COPY_CHUNK = 50_000


@dataclass(frozen=True)
class LagPlan:
    customers: int  # state rows in the table
    due: int  # customers whose deadline falls in the measured window
    per_step: int  # customers sharing one deadline
    step_s: float  # seconds between deadlines
    lead_s: float = 3.0  # first deadline this long after the classifier is ready
    grace_s: float = 10.0  # wait after the last deadline before counting the rest missing
    profile_dir: Path | None = None


def first_purchase_state(customer_id: str, at: datetime, rules: RuleSet) -> CustomerState:
    """A customer's state after one purchase at `at`, as the classifier computes it."""
    meta = EventMeta("bench", f"lag-{customer_id}", customer_id, at)
    state, _ = apply(None, Purchase(meta, "o-1", Decimal("42.50"), "USD"), rules, at=at)
    return state


def clones(template: CustomerState, ids: list[str]) -> list[tuple[Any, ...]]:
    """The template's row under each customer id (the rows do not contain the id elsewhere)."""
    row = state_record(template)
    return [(cid, *row[1:]) for cid in ids]


async def _copy(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, len(rows), COPY_CHUNK):
            await conn.copy_records_to_table(
                "customers", records=rows[start : start + COPY_CHUNK], columns=STATE_COLUMNS
            )
    finally:
        await conn.close()


async def _clone(conn: asyncpg.Connection, start: int, stop: int) -> None:
    """Customers pop-<start> .. pop-<stop - 1>, copies of the 'template' row, inside PostgreSQL."""
    columns = ", ".join(STATE_COLUMNS[1:])
    for lo in range(start, stop, 200_000):
        await conn.execute(
            f"INSERT INTO customers (customer_id, {columns}) "  # noqa: S608 (constants)
            f"SELECT 'pop-' || g, {columns} FROM customers, "
            "generate_series($1::int, $2::int) AS g WHERE customer_id = 'template'",
            lo,
            min(lo + 200_000, stop) - 1,
        )


async def _load_population(scenario: Scenario, rules: RuleSet, count: int) -> tuple[float, float]:
    """COPY one domain-made row, clone it inside PostgreSQL under `count` ids; the population
    statistics are built (by the classifier's own code) over the first thousand."""
    t0 = time.monotonic()
    template = first_purchase_state("template", datetime.now(UTC) - timedelta(days=1), rules)
    conn = await asyncpg.connect(scenario.dsn)
    try:
        await conn.copy_records_to_table(
            "customers", records=clones(template, ["template"]), columns=STATE_COLUMNS
        )
        first = min(count, 1_000)
        await _clone(conn, 0, first)
        t1 = time.monotonic()
        await _settled_population(scenario, rules)
        stats_s = time.monotonic() - t1
        await _clone(conn, first, count)
        await conn.execute("DELETE FROM customers WHERE customer_id = 'template'")
        await conn.execute("ANALYZE customers")
    finally:
        await conn.close()
    return time.monotonic() - t0 - stats_s, stats_s


async def _settled_population(scenario: Scenario, rules: RuleSet) -> None:
    """Build the population statistics over the customers loaded so far and mark their sweep
    done, as a classifier that has been running for a while would have them: the measurement is
    of the review scheduler, not of a first population sweep over 1,000,000 customers (which
    shares the classifier's event loop and delays every deadline while it runs)."""
    engine = create_engine(scenario.database)
    try:
        stats = await population_store.rebuild(engine, rules, datetime.now(UTC), None)
        if stats is not None:
            async with engine.begin() as conn:
                await population_store.save_progress(
                    conn, population_store.SweepProgress(stats.version, "", True)
                )
    finally:
        await engine.dispose()


def _due_rows(plan: LagPlan, rules: RuleSet, first: datetime) -> list[tuple[Any, ...]]:
    onboarding = timedelta(days=float(rules.params.get("onboarding_days", 30)))
    rows: list[tuple[Any, ...]] = []
    steps = -(-plan.due // plan.per_step)
    for k in range(steps):
        deadline = first + timedelta(seconds=k * plan.step_s)
        template = first_purchase_state("template", deadline - onboarding, rules)
        if template.next_review_at != deadline:
            raise RuntimeError(
                f"domain gave next review {template.next_review_at}, expected {deadline}"
            )
        n = min(plan.per_step, plan.due - k * plan.per_step)
        rows += clones(template, [f"due-{k}-{j}" for j in range(n)])
    return rows


async def _watch(
    dsn: str, due: list[str], until: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Per due customer, the lag (s) of its first time-driven change: as first seen committed,
    and by its transaction's start (`recorded_at`)."""
    seen: dict[str, float] = {}
    by_tx: dict[str, float] = {}
    unseen = set(due)
    conn = await asyncpg.connect(dsn)
    try:
        while unseen and time.monotonic() < until:
            # Only the customers not seen yet, through the (customer_id, …) index: the history
            # table also fills with the other customers' changes (a new churn model re-judges
            # all of them), and a scan of it on every poll kept PostgreSQL busy for a whole core,
            # slowing the classifier it measures and the polls themselves.
            rows = await conn.fetch(
                "SELECT customer_id, min(effective_at) AS due, min(recorded_at) AS tx "
                "FROM classification_changes "
                "WHERE customer_id = ANY($1::text[]) AND cause LIKE 'time:%' "
                "GROUP BY customer_id",
                list(unseen),
            )
            now = await conn.fetchval("SELECT clock_timestamp()")
            for r in rows:
                seen[r["customer_id"]] = (now - r["due"]).total_seconds()
                by_tx[r["customer_id"]] = (r["tx"] - r["due"]).total_seconds()
                unseen.discard(r["customer_id"])
            await asyncio.sleep(0.05)
        return seen, by_tx
    finally:
        await conn.close()


def _pct(values: list[float], missing: int) -> dict[str, float | None]:
    arr = np.array(values + [np.inf] * missing) if values or missing else np.array([np.inf])

    def q(p: float) -> float | None:
        v = float(np.percentile(arr, p))
        return round(v * 1000, 1) if np.isfinite(v) else None

    return {"p50_ms": q(50), "p99_ms": q(99), "max_ms": q(100)}


def run_lag(stack: Stack, plan: LagPlan) -> dict[str, Any]:
    rules = load_rules(ROOT / "config" / "classifier.yaml")
    scenario: Scenario = stack.scenario("lag")
    population = plan.customers - plan.due
    load_s, stats_s = asyncio.run(_load_population(scenario, rules, population))
    infra0 = stack.infra_cpu()
    wall0 = time.monotonic()
    svc = stack.start_service("classifier", scenario)
    try:
        svc.wait_ready(timeout=60)
        prof = None
        if plan.profile_dir is not None and svc.pid is not None:
            out = plan.profile_dir / f"classifier-lag-{plan.customers}.txt"
            prof = Profile(svc.pid, 15, out)
        # The due customers arrive once the classifier runs, deadlines a little ahead: the
        # scheduler finds them through the next-review index among all the others.
        t0 = time.monotonic()
        first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=plan.lead_s)
        due_rows = _due_rows(plan, rules, first)
        asyncio.run(_copy(scenario.dsn, due_rows))
        due_load_s = time.monotonic() - t0
        steps = -(-plan.due // plan.per_step)
        last = first + timedelta(seconds=(steps - 1) * plan.step_s)
        horizon = (last - datetime.now(UTC)).total_seconds() + plan.grace_s
        seen, by_tx = asyncio.run(
            _watch(scenario.dsn, [row[0] for row in due_rows], time.monotonic() + horizon)
        )
        rss_after_load = svc.usage()["peak_rss_mib"]
        profile = prof.top() if prof is not None else None
    finally:
        wall = time.monotonic() - wall0
        used = stack.stop_service(svc)
    infra = stack.infra_cpu()
    missing = max(plan.due - len(seen), 0)
    window = (last - first).total_seconds() + plan.step_s
    return {
        "customers": plan.customers,
        "due": plan.due,
        "due_per_s": round(plan.due / window, 1),
        "deadline_window_s": round(window, 1),
        "population_load_s": round(load_s, 1),
        "population_stats_s": round(stats_s, 1),
        "due_load_s": round(due_load_s, 2),
        "fired": len(seen),
        "missing": missing,
        **_pct(list(seen.values()), missing),
        "tx_start": _pct(list(by_tx.values()), missing),
        "peak_rss_mib": used["peak_rss_mib"],
        "peak_rss_mib_while_measuring": rss_after_load,
        "cpu_s": used["cpu_s"],
        **({"profile": profile} if profile is not None else {}),
        "cpu_util": {
            "classifier": round(used["cpu_s"] / wall, 2),
            **{k: round((infra[k] - infra0[k]) / wall, 2) for k in infra},
        },
    }
