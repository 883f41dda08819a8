"""Notifier: care actions created *and delivered* to a local webhook receiver, per second.

The `customer-classification-changed` topic is pre-loaded with first value-tier assignments (one
care action each). Then a webhook receiver process (bench/webhook_receiver.py: verifies every
Standard Webhooks signature, counts unique webhook-ids and duplicates) and one notifier process
configured to POST to it start on a fresh database. The figure is actions / (last webhook-id
received - first action created): created, published to `care-actions`, signed, POSTed and
answered 2xx. Delivery latency is created → received, from the receiver.

The playbook is config/notifier.yaml minus its quiet hours (customer-facing messages would
otherwise wait for the morning, and the phase would measure the clock).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import yaml

from bench.kafka_io import preload
from bench.progress import Profile, service_costs
from bench.stack import ROOT, Sampled, Stack
from bench.webhook_receiver import Receiver
from tierflow_common.embedded.process import tail
from tierflow_common.outbox import backlog


def bench_playbook(out_dir: Path) -> Path:
    """config/notifier.yaml without quiet hours (caps and every rule kept)."""
    doc = yaml.safe_load((ROOT / "config" / "notifier.yaml").read_text())
    doc.get("contact_policy", {}).pop("quiet_hours", None)
    path = out_dir / "notifier-bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass(frozen=True)
class NotifierPlan:
    events: int
    max_seconds: float
    verify_every: int = 1
    profile_dir: Path | None = None
    profile_seconds: int = 15


_PROGRESS = """
    SELECT
      (SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = $1)
        AS consumed
"""
# Counted once, when the phase is over: on every tick, counting the action and delivery tables
# (60,000 rows each by the end) cost PostgreSQL ~17 ms a time, 1.7 s of CPU per run on the
# machine being measured.
_TOTALS = """
    SELECT
      (SELECT count(*) FROM care_actions) AS actions,
      (SELECT count(*) FROM care_deliveries WHERE state = 'delivered') AS delivered,
      (SELECT count(*) FROM care_deliveries WHERE state = 'dead') AS dead
"""


async def _counts(dsn: str, group: str, *, totals: bool = False) -> dict[str, int]:
    """Records consumed and the care-actions outbox backlog (both read a handful of rows: the
    watch loop asks four times a second); with `totals`, what the phase created and delivered."""
    conn = await asyncpg.connect(dsn)
    try:
        out = {k: int(v) for k, v in dict(await conn.fetchrow(_PROGRESS, group)).items()}
        out["outbox"] = await backlog(conn, "notifier")
        if totals:
            out.update({k: int(v) for k, v in dict(await conn.fetchrow(_TOTALS)).items()})
        return out
    finally:
        await conn.close()


async def _first_created(dsn: str) -> float | None:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT extract(epoch FROM min(created_at)) FROM care_actions")
        return float(value) if value is not None else None
    finally:
        await conn.close()


def run_notifier(stack: Stack, plan: NotifierPlan) -> dict[str, Any]:
    scenario = stack.scenario("not")
    topic = scenario.topics.classification_changed
    prefix = f"not-{uuid.uuid4().hex[:6]}"
    preload_s = preload(
        stack.kafka.bootstrap_servers,
        topic,
        kind="change",
        count=plan.events,
        prefix=prefix,
        customers=plan.events,
    )
    result: dict[str, Any] = {
        "events": plan.events,
        "customers": plan.events,
        "preload_s": round(preload_s, 2),
        "preload_records_per_s": round(plan.events / preload_s, 1),
        "signatures_verified": f"1 in {plan.verify_every}",
    }
    receiver = Receiver(stack.log_dir, verify_every=plan.verify_every)
    receiver.start()
    assert receiver.pid is not None
    receiver_cpu = Sampled(receiver.pid)
    env = {
        **scenario.env,
        "NOTIFIER_PLAYBOOKS_FILE": str(bench_playbook(stack.dir)),
        "NOTIFIER_WEBHOOKS": json.dumps([receiver.endpoint("bench")]),
    }
    infra0 = stack.infra_cpu()
    wall0 = time.monotonic()
    svc = stack.start_service("notifier", replace(scenario, env=env))
    group = scenario.env["NOTIFIER_GROUP_ID"]
    try:
        prof = None
        cpu_at_first = 0.0
        consumed_at_first = 0
        t0 = time.monotonic()
        first_commit: float | None = None
        all_consumed: float | None = None
        counts: dict[str, int] = {}
        stats: dict[str, Any] = {}
        while True:
            counts = asyncio.run(_counts(scenario.dsn, group))
            stats = receiver.stats()
            now = time.monotonic() - t0
            if first_commit is None and counts["consumed"] > 0:
                first_commit = now
                cpu_at_first = svc.usage()["cpu_s"]
                consumed_at_first = counts["consumed"]
                if plan.profile_dir is not None and svc.pid is not None:
                    # From the first commit: the steady state, not the imports at start-up.
                    out = plan.profile_dir / "notifier.txt"
                    prof = Profile(svc.pid, plan.profile_seconds, out)
            if all_consumed is None and counts["consumed"] >= plan.events and not counts["outbox"]:
                all_consumed = now
            if stats["unique"] >= plan.events and all_consumed is not None:
                break
            if now > plan.max_seconds or (svc.proc is not None and svc.proc.poll() is not None):
                break
            time.sleep(0.25)
        cpu_at_end = svc.usage()["cpu_s"]
        counts = asyncio.run(_counts(scenario.dsn, group, totals=True))
        created0 = asyncio.run(_first_created(scenario.dsn))
        last = stats.get("last_at")
        delivered_s = last - created0 if last is not None and created0 is not None else None
        result.update(
            {
                "consumed": counts.get("consumed", 0),
                "actions": counts.get("actions", 0),
                "delivered": stats["unique"],
                "dead": counts.get("dead", 0),
                "duplicates": stats["duplicates"],
                "bad_signatures": stats["bad_signatures"],
                "requests": stats["requests"],
                "completed": stats["unique"] >= plan.events,
                "first_commit_after_s": round(first_commit, 2) if first_commit else None,
                "drained_after_s": round(now, 2) if stats["unique"] >= plan.events else None,
                # Created + published (outbox empty), from the first commit: the old figure.
                "created_per_s": round(plan.events / (all_consumed - first_commit), 1)
                if all_consumed is not None
                and first_commit is not None
                and all_consumed > first_commit
                else None,
                # First action created → last webhook-id received (wall clock, both sides).
                "delivered_per_s": round(stats["unique"] / delivered_s, 1) if delivered_s else None,
                "delivery_latency_ms": stats["latency_ms"],
            }
        )
        # CPU the notifier spent per action after start-up (created, published, signed, POSTed,
        # recorded): on a shared machine the wall-clock rate follows the neighbours' load, this
        # does not. 1000 / it = actions/s one process would sustain on a core of its own.
        steady = min(stats["unique"], counts.get("consumed", 0)) - consumed_at_first
        if first_commit is not None and steady > 0:
            per_action = (cpu_at_end - cpu_at_first) / steady * 1000
            result["steady_cpu_ms_per_action"] = round(per_action, 3)
            result["actions_per_core_s"] = round(1000 / per_action, 1) if per_action else None
        result["records_per_s"] = result["delivered_per_s"]
        result["completed_per_s"] = result["delivered_per_s"] if result["completed"] else None
        if svc.proc is not None and (svc.proc.poll() is not None or not result["completed"]):
            result["log_tail"] = tail(svc.log_file, 15)[-1500:]
        if prof is not None:
            result["profile"] = prof.top()
    finally:
        wall = time.monotonic() - wall0
        used = stack.stop_service(svc)
        receiver_used = receiver_cpu.cpu_seconds()
        receiver_cpu.close()
        receiver.stop()
    done = int(result.get("delivered") or 0)
    result.update(
        service_costs(
            "notifier",
            used,
            (infra0, stack.infra_cpu()),
            done,
            wall,
            extra_cpu_s={"receiver": receiver_used},
        )
    )
    return result
