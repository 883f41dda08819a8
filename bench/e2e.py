"""End to end: ingest 202 -> `customer-tier-changed` record, open loop at fixed offered rates.

All three services run. The load generator posts batches of fresh customers' first purchases (so
every event yields exactly one tier change) on a fixed schedule; a consumer in this process
reads the tier topic and notes when each event's change arrives (matched by its `cause`).
Latency is measured from the 202 (the ingest's acknowledgement) and, coordinated omission
corrected, from the moment the request was *due* to be sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import TopicPartition

from bench.io_count import per_event, table_writes, topic_records
from bench.loadgen import PCTS, LoadSpec, run_load
from bench.progress import Profile, wait_outbox_empty
from bench.stack import ServiceProc, Stack
from tierflow_common.kafka import make_consumer
from tierflow_common.settings import KafkaSettings

# PostgreSQL 15 flushes a backend's table counters at most once a second while it works and
# after PGSTAT_IDLE_INTERVAL (10 s) once it idles.
STATS_SETTLE_S = 11.0


@dataclass(frozen=True)
class E2EPlan:
    rates: list[int]  # events/s offered
    duration: float
    batch: int  # events per request
    drain_seconds: float
    profile_dir: Path | None = None


class TierReader:
    """Records the arrival time of each tier change, keyed by the event id in its `cause`."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.arrived: dict[str, float] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("tier topic reader did not start")

    async def _run(self) -> None:
        # A short fetch wait, so the instrument itself adds no broker fetch delay (see kafka_hop).
        consumer = make_consumer(
            KafkaSettings(bootstrap_servers=self.bootstrap),
            group_id=None,
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=1024 * 1024,
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(self.topic, p)
                for p in sorted(consumer.partitions_for_topic(self.topic) or ())
            ]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self._ready.set()
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for recs in batch.values():
                    for rec in recs:
                        cause = orjson.loads(rec.value)["cause"]
                        self.arrived.setdefault(cause.rpartition("/")[2], now)
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def _one_rate(
    ingest: ServiceProc, reader: TierReader, rate: int, plan: E2EPlan, api_key: str | None
) -> dict[str, Any]:
    prefix = f"e{rate}-{uuid.uuid4().hex[:6]}"
    before = len(reader.arrived)
    res = run_load(
        LoadSpec(
            ingest.port,
            "/v1/events:batch",
            "application/cloudevents-batch+json",
            rate / plan.batch,
            plan.duration,
            prefix,
            batch=plan.batch,
            customers=None,
            connections=32,
            api_key=api_key,
        )
    )
    ok_idx = np.flatnonzero(res.ok)
    expected = len(ok_idx) * plan.batch
    deadline = time.monotonic() + plan.drain_seconds
    while time.monotonic() < deadline and len(reader.arrived) - before < expected:
        time.sleep(0.2)
    from_ack: list[float] = []
    from_due: list[float] = []
    missing = 0
    for i in ok_idx:
        for j in range(plan.batch):
            t = reader.arrived.get(f"{prefix}-{i}-{j}")
            if t is None:
                missing += 1
                continue
            from_ack.append(t - res.done[i])
            from_due.append(t - res.intended[i])
    ack = np.array(from_ack)
    due = np.array(from_due)
    # Changes that never arrived within the drain window count as infinitely late.
    ack_all = np.concatenate([ack, np.full(missing, np.inf)])
    due_all = np.concatenate([due, np.full(missing, np.inf)])
    http = res.summary()
    return {
        "offered_eps": rate,
        "events_per_request": plan.batch,
        "accepted_events": expected,
        "ingest_errors": http["errors"],
        "ingest_throughput_eps": http["throughput_eps"],
        "ingest_latency_ms": http["latency_ms"],
        "changes_received": len(from_ack),
        "missing_after_drain": missing,
        "latency_ms": _pcts_with_missing(ack_all),
        "latency_from_due_ms": _pcts_with_missing(due_all),
        "_latencies": ack_all,
    }


def _pcts_with_missing(values: np.ndarray) -> dict[str, float | str]:
    """Percentiles where a change that never arrived counts as infinitely late ("missing")."""
    if len(values) == 0:
        return {}
    out: dict[str, float | str] = {}
    for p in (*PCTS, 100.0):
        v = float(np.percentile(values, p, method="higher"))
        out["max" if p == 100.0 else f"p{p:g}"] = (
            round(v * 1000, 2) if np.isfinite(v) else "missing"
        )
    return out


def run_e2e(stack: Stack, plan: E2EPlan) -> dict[str, Any]:
    scenario = stack.scenario("e2e")
    names = ("ingest", "classifier", "notifier")
    services = {n: stack.start_service(n, scenario) for n in names}
    reader = TierReader(stack.kafka.bootstrap_servers, scenario.topics.tier_changed)
    runs: dict[str, Any] = {}
    try:
        for svc in services.values():
            svc.wait_ready()
        topics = scenario.topics.all_topics()
        writes0 = table_writes(scenario.dsn)
        records0 = topic_records(stack.kafka, topics)
        io: dict[str, Any] = {}
        reader.start()
        for rate in plan.rates:
            cpu0 = {n: s.usage()["cpu_s"] for n, s in services.items()}
            infra0 = stack.infra_cpu()
            profs: dict[str, Profile] = {}
            if plan.profile_dir is not None and rate == plan.rates[-1]:
                for n, s in services.items():
                    if s.pid is not None:
                        out = plan.profile_dir / f"e2e-{n}-{rate}.txt"
                        profs[n] = Profile(s.pid, int(plan.duration), out)
            run = _one_rate(services["ingest"], reader, rate, plan, scenario.api_key)
            wait_outbox_empty(scenario.dsn, plan.drain_seconds)
            events = max(run["accepted_events"], 1)
            run["cpu_s_per_1k"] = {
                n: round((s.usage()["cpu_s"] - cpu0[n]) / events * 1000, 4)
                for n, s in services.items()
            }
            infra = stack.infra_cpu()
            run["infra_cpu_s_per_1k"] = {
                k: round((infra[k] - infra0[k]) / events * 1000, 4) for k in infra
            }
            if profs:
                run["profile"] = {n: p.top() for n, p in profs.items()}
            runs[str(rate)] = run
            if not io:
                # Rows and records per event over the first rate, whose changes all arrive
                # (the later ones leave some behind); every event is alike (a new customer's
                # first purchase). The counters settle first (STATS_SETTLE_S).
                time.sleep(STATS_SETTLE_S)
                records = topic_records(stack.kafka, topics)
                io = per_event(
                    writes0,
                    table_writes(scenario.dsn),
                    {t: n - records0.get(t, 0) for t, n in records.items()},
                    max(run["accepted_events"], 1),
                )
                io["rate"] = rate
                io["missing_after_drain"] = run["missing_after_drain"]
    finally:
        reader.stop()
        used = {n: stack.stop_service(s) for n, s in services.items()}
    return {
        "runs": runs,
        "io": io,
        "peak_rss_mib": {n: u["peak_rss_mib"] for n, u in used.items()},
    }
