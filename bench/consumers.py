"""Classifier and notifier: sustained records/s draining a pre-loaded topic.

The topic is filled first by raw producer processes (nothing else running), then one service
process starts on a fresh database and the clock runs from its first committed batch until every
record is applied *and* its outbox is published (or the time box ends: then the rate is over the
part drained, and the table says so).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench import statements
from bench.baselines import raw_consume
from bench.io_count import applied_records, per_event, table_writes, topic_records
from bench.kafka_io import preload
from bench.progress import Profile, service_costs, watch_drain
from bench.stack import Stack
from tierflow_common.embedded.process import tail


@dataclass(frozen=True)
class DrainPlan:
    name: str  # classifier | notifier
    events: int
    customers: int
    max_seconds: float
    consume_baseline: bool = False
    profile_dir: Path | None = None
    profile_seconds: int = 15
    # Processes of the service in one consumer group (`tierflow run --classifiers N`); the
    # costs are their sum, the peak RSS the largest one's; a profile follows the first.
    processes: int = 1


def run_drain(stack: Stack, plan: DrainPlan) -> dict[str, Any]:
    scenario = stack.scenario(plan.name[:3])
    classifier = plan.name == "classifier"
    topic = (
        scenario.topics.customer_events if classifier else scenario.topics.classification_changed
    )
    prefix = f"{plan.name[:3]}-{uuid.uuid4().hex[:6]}"
    preload_s = preload(
        stack.kafka.bootstrap_servers,
        topic,
        kind="purchase" if classifier else "change",
        count=plan.events,
        prefix=prefix,
        customers=plan.customers,
    )
    result: dict[str, Any] = {
        "events": plan.events,
        "customers": plan.customers if classifier else plan.events,
        "preload_s": round(preload_s, 2),
        "preload_records_per_s": round(plan.events / preload_s, 1),
    }
    if plan.consume_baseline:
        before = stack.infra_cpu()
        raw = raw_consume(stack.kafka.bootstrap_servers, topic, limit=plan.events, max_seconds=20)
        raw["server_cpu_s_per_1k"] = stack.server_cpu_s_per_1k(before, "tansu", raw["records"])
        result["raw_consume"] = raw
    outputs = [t for t in scenario.topics.all_topics() if t != topic]
    group = scenario.env["CLASSIFIER_GROUP_ID" if classifier else "NOTIFIER_GROUP_ID"]
    writes0 = table_writes(scenario.dsn)
    records0 = topic_records(stack.kafka, outputs)
    infra0 = stack.infra_cpu()
    wall0 = time.monotonic()
    svc = stack.start_service(plan.name, scenario)
    others = [stack.start_service(plan.name, scenario) for _ in range(plan.processes - 1)]
    try:
        prof: Profile | None = None
        applied_at_start = 0

        async def start_profile(conn: asyncpg.Connection, applied: int) -> None:
            # From the first commit: the steady state, not the imports at start-up (which were
            # 40% of a profile that started with the process).
            nonlocal prof, applied_at_start
            if plan.profile_dir is not None and svc.pid is not None:
                out = plan.profile_dir / f"{plan.name}-{plan.customers}.txt"
                await statements.reset(conn)
                applied_at_start = applied
                prof = Profile(svc.pid, plan.profile_seconds, out)

        drain = watch_drain(
            scenario.dsn,
            group=group,
            producer=plan.name,
            table="customers" if classifier else "care_actions",
            total=plan.events,
            max_seconds=plan.max_seconds,
            on_first_progress=start_profile,
        )
        result.update(drain.summary())
        result["processes"] = plan.processes
        if svc.proc is not None and (svc.proc.poll() is not None or not result["consumed"]):
            # It died or never committed a batch: keep the reason with the figure.
            result["log_tail"] = tail(svc.log_file, 15)[-1500:]
        if prof is not None:
            result["profile"] = prof.top()
            # From the profile's start to the drain's end, per event applied in that window.
            result["postgres_statements"] = statements.report(
                scenario.dsn,
                prof.out.with_name(prof.out.stem + "-postgres.txt"),
                applied_records(scenario.dsn, group) - applied_at_start,
            )
    finally:
        wall = time.monotonic() - wall0
        used = stack.stop_service(svc)
        for other in others:
            more = stack.stop_service(other)
            used = {
                "cpu_s": used["cpu_s"] + more["cpu_s"],
                "peak_rss_mib": max(used["peak_rss_mib"], more["peak_rss_mib"]),
            }
    consumed = int(result["consumed"])
    result["completed"] = result["drained_after_s"] is not None
    result.update(service_costs(plan.name, used, (infra0, stack.infra_cpu()), consumed, wall))
    applied = applied_records(scenario.dsn, group)
    if applied:
        # The service's connections have closed, so PostgreSQL's counters are complete (and
        # the stored offsets final). A time-boxed drain may stop with records still in the
        # outbox: they count as rows inserted, not as records produced.
        records = topic_records(stack.kafka, outputs)
        result["io"] = per_event(
            writes0,
            table_writes(scenario.dsn),
            {t: n - records0.get(t, 0) for t, n in records.items()},
            applied,
        )
    return result
