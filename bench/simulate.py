"""What-if at scale: `POST /v1/rules:simulate` of a candidate that lowers the VIP bar, over a
million stored customers, while the classifier goes on consuming.

The customers' rows come from the classifier's own domain code: a handful of templates (1-4
orders, spend from about 300 to 9,000, last purchase from days to months ago; `apply` of each
purchase, then the repository's encoding), cloned inside PostgreSQL under distinct ids, and the
population statistics built over them by the classifier's own code. One classifier process then
starts (it seeds the shipped rule set), and the runner asks it to simulate. Measured:

- the request's wall time and the report's own `elapsed_ms`, customers per second;
- the simulation process's peak RSS (the classifier spawns it; sampled every 100 ms) and the
  classifier's own RSS before and after: the "extra memory" a simulation costs;
- consumption meanwhile: a purchase for a new customer is produced every `probe_every_s`, and
  the lag from its produce to its state row being committed is taken, p50 / max, with the
  probes sent before the simulation as the reference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import numpy as np
import psutil

from bench.stack import ROOT, Scenario, Stack
from tierflow_classifier.adapters import population_store
from tierflow_classifier.adapters.child_process import os_name
from tierflow_classifier.adapters.repository import STATE_COLUMNS, save_states
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.apply import apply
from tierflow_classifier.domain.classify import Outside, catch_up, classify
from tierflow_classifier.domain.model import CustomerState, EventMeta, Purchase
from tierflow_classifier.domain.rules import RuleSet
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.db.engine import create_engine
from tierflow_common.kafka import make_producer
from tierflow_common.keys import create_key_sync
from tierflow_common.settings import KafkaSettings

RULES_FILE = ROOT / "config" / "classifier.yaml"
# The candidate: the VIP bar from 5,000 to 3,000 and 3 orders to 2.
CANDIDATE = (
    RULES_FILE.read_text()
    .replace("vip_spend: 5000 ", "vip_spend: 3000 ")
    .replace("vip_orders: 3\n", "vip_orders: 2\n")
)


@dataclass(frozen=True)
class SimulatePlan:
    customers: int
    probe_every_s: float = 0.1
    timeout_s: float = 900.0


def _templates(rules: RuleSet, now: datetime) -> list[CustomerState]:
    out = []
    for k in range(24):
        cid = f"tpl-{k}"
        orders = 1 + k % 4
        spend = Decimal(300 + (k * 397) % 8_700)
        last = now - timedelta(days=3 + (k * 11) % 200)
        state: CustomerState | None = None
        for n in range(orders):
            at = last - timedelta(days=25 * (orders - 1 - n))
            meta = EventMeta("bench", f"{cid}-o{n}", cid, at)
            state, _ = apply(
                state, Purchase(meta, f"{cid}-o{n}", spend / orders, "USD"), rules, at=at
            )
        assert state is not None
        out.append(state)
    return out


async def _load(scenario: Scenario, rules: RuleSet, count: int) -> float:
    """The templates, judged as a running classifier would have them now (deadlines fired,
    population-relative classes by statistics built over them), cloned to `count` customers
    (the same mix, so the same statistics)."""
    t0 = time.monotonic()
    now = datetime.now(UTC)
    templates = _templates(rules, now)
    engine = create_engine(scenario.database)
    try:
        async with engine.begin() as c:
            await save_states(c, templates)
        stats = await population_store.rebuild(engine, rules, now, None)
        assert stats is not None
        outside = Outside(stats)
        judged = []
        for t in templates:
            state, _ = catch_up(t, rules, until=now, outside=outside)
            state, _ = classify(state, rules, at=now, cause="bench", outside=outside)
            judged.append(state)
        async with engine.begin() as c:
            await save_states(c, judged)
            await population_store.save_progress(
                c, population_store.SweepProgress(stats.version, "", True)
            )
    finally:
        await engine.dispose()
    columns = ", ".join(STATE_COLUMNS[1:])
    conn = await asyncpg.connect(scenario.dsn)
    try:
        per = -(-count // len(templates))
        for k, template in enumerate(judged):
            lo, hi = k * per, min((k + 1) * per, count)
            await conn.execute(
                f"INSERT INTO customers (customer_id, {columns}) "  # noqa: S608 (constants)
                f"SELECT 'c' || lpad(g::text, 8, '0'), {columns} FROM customers, "
                "generate_series($1::int, $2::int) AS g WHERE customer_id = $3",
                lo,
                hi - 1,
                template.customer_id,
            )
        await conn.execute("DELETE FROM customers WHERE customer_id LIKE 'tpl-%'")
        await conn.execute("ANALYZE customers")
    finally:
        await conn.close()
    return time.monotonic() - t0


class _Probe(threading.Thread):
    """A purchase for a fresh customer every `every_s`; the lag until its row is committed."""

    def __init__(self, kafka: KafkaSettings, scenario: Scenario, every_s: float) -> None:
        super().__init__(daemon=True)
        self.kafka, self.scenario, self.every_s = kafka, scenario, every_s
        self.stopping = threading.Event()
        self.sent: dict[str, float] = {}  # customer id -> monotonic send time
        self.lag: dict[str, float] = {}
        self.phase: dict[str, str] = {}  # customer id -> "before" / "during"
        self.label = "before"

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = make_producer(self.kafka)
        await producer.start()
        conn = await asyncpg.connect(self.scenario.dsn)
        try:
            i = 0
            while not self.stopping.is_set():
                cid = f"probe-{i:06d}"
                event = EmittedEvent(
                    id=f"probe-{i}",
                    type="purchase",
                    source="bench",
                    subject=cid,
                    time=datetime.now(UTC),
                    data={"order_id": f"p{i}", "amount": "10.00", "currency": "USD"},
                )
                rec = encode_event(event)
                await producer.send_and_wait(
                    self.scenario.topics.customer_events,
                    value=rec.value,
                    key=rec.key,
                    headers=rec.headers,
                )
                self.sent[cid], self.phase[cid] = time.monotonic(), self.label
                i += 1
                waiting = [c for c in self.sent if c not in self.lag]
                for r in await conn.fetch(
                    "SELECT customer_id FROM customers WHERE customer_id = ANY($1::text[])",
                    waiting,
                ):
                    self.lag[r["customer_id"]] = time.monotonic() - self.sent[r["customer_id"]]
                await asyncio.sleep(self.every_s)
        finally:
            await conn.close()
            await producer.stop()

    def summary(self, label: str) -> dict[str, Any]:
        ids = [c for c, p in self.phase.items() if p == label]
        lags = [self.lag[c] for c in ids if c in self.lag]
        return {
            "probes": len(ids),
            "applied": len(lags),
            "lag_p50_ms": round(float(np.percentile(lags, 50)) * 1000, 1) if lags else None,
            "lag_max_ms": round(max(lags) * 1000, 1) if lags else None,
        }


class _ChildRss(threading.Thread):
    """The peak memory of the classifier's child processes while the simulation runs: the
    simulation processes and the fork server they start from (what a what-if adds), apart
    from a churn fit that may run meanwhile (the children name themselves,
    adapters/child_process.py)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.parent = psutil.Process(pid)
        self.stopping = threading.Event()
        self.peak = 0  # RSS: shared pages counted in every process
        self.peak_uss = 0  # USS: what each process alone holds (the memory it adds)
        self.peak_fit_uss = 0

    def run(self) -> None:
        fit = os_name("tierflow-churn-fit")
        while not self.stopping.wait(0.1):
            rss = uss = fit_uss = 0
            for child in self.parent.children(recursive=True):
                try:
                    name = child.name()
                    info = child.memory_full_info()
                except psutil.Error:
                    continue
                if name == fit:
                    fit_uss += info.uss
                else:
                    rss, uss = rss + info.rss, uss + info.uss
            self.peak, self.peak_uss = max(self.peak, rss), max(self.peak_uss, uss)
            self.peak_fit_uss = max(self.peak_fit_uss, fit_uss)


def run_simulate(stack: Stack, plan: SimulatePlan) -> dict[str, Any]:
    rules = load_rules(RULES_FILE)
    scenario = stack.scenario("simulate")
    load_s = asyncio.run(_load(scenario, rules, plan.customers))
    key = create_key_sync(scenario.database, name="bench-rules", roles=["read", "admin"])[1]
    svc = stack.start_service("classifier", scenario)
    try:
        svc.wait_ready(timeout=120)
        assert svc.pid is not None
        probe = _Probe(stack.kafka, scenario, plan.probe_every_s)
        probe.start()
        time.sleep(3)  # reference probes: consumption with nothing else to do
        rss_before = psutil.Process(svc.pid).memory_info().rss
        child = _ChildRss(svc.pid)
        child.start()
        probe.label = "during"
        t0 = time.monotonic()
        resp = httpx.post(
            f"{svc.url}/v1/rules:simulate",
            content=CANDIDATE,
            headers={"content-type": "application/yaml", "authorization": f"Bearer {key}"},
            timeout=plan.timeout_s,
        )
        wall = time.monotonic() - t0
        probe.label = "after"
        child.stopping.set()
        child.join()
        rss_after = psutil.Process(svc.pid).memory_info().rss
        time.sleep(2)
        probe.stopping.set()
        probe.join(timeout=10)
        resp.raise_for_status()
        report = resp.json()
    finally:
        used = stack.stop_service(svc)
    tiers = report["dimensions"]["value_tier"]
    return {
        "customers": report["customers"],
        "load_s": round(load_s, 1),
        "wall_s": round(wall, 2),
        "elapsed_ms": report["elapsed_ms"],
        "customers_per_s": round(report["customers"] / wall) if wall else None,
        "simulation_peak_rss_mib": round(child.peak / 2**20, 1),
        "simulation_peak_uss_mib": round(child.peak_uss / 2**20, 1),
        "churn_fit_peak_uss_mib": round(child.peak_fit_uss / 2**20, 1),
        "classifier_rss_mib_before": round(rss_before / 2**20, 1),
        "classifier_rss_mib_after": round(rss_after / 2**20, 1),
        "value_tier_changed": tiers["changed"],
        "changes": report["changes"],
        "care_actions": report["care_actions"],
        "consumption_before": probe.summary("before"),
        "consumption_during": probe.summary("during"),
        "classifier_cpu_s": used["cpu_s"],
    }
