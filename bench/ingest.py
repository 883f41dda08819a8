"""Ingest: single-event requests at fixed offered loads (open loop) and batch events/s."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import LoadSpec, event_json, run_load
from bench.progress import Profile
from bench.stack import Stack


@dataclass(frozen=True)
class IngestPlan:
    rates: list[int]
    duration: float
    batch_size: int
    batch_duration: float
    bulk_events: int
    profile_dir: Path | None = None


def run_ingest(stack: Stack, plan: IngestPlan) -> dict[str, Any]:
    scenario = stack.scenario("ingest")
    svc = stack.start_service("ingest", scenario)
    try:
        svc.wait_ready()
        tag = uuid.uuid4().hex[:6]
        single: dict[str, Any] = {}
        latencies: dict[str, Any] = {}
        cpu0 = svc.usage()["cpu_s"]
        infra0 = stack.infra_cpu()
        accepted = 0
        profile: dict[str, Any] | None = None
        for rate in plan.rates:
            prof = None
            if plan.profile_dir is not None and rate == plan.rates[-1] and svc.pid is not None:
                prof = Profile(
                    svc.pid, int(plan.duration) + 1, plan.profile_dir / "ingest-single.txt"
                )
            wall0, cpu_r0, infra_r0 = time.monotonic(), svc.usage()["cpu_s"], stack.infra_cpu()
            res = run_load(
                LoadSpec(
                    svc.port,
                    "/v1/events",
                    "application/cloudevents+json",
                    rate,
                    plan.duration,
                    f"s{rate}-{tag}",
                    customers=100_000,
                    api_key=scenario.api_key,
                )
            )
            if prof is not None:
                profile = prof.top()
            single[str(rate)] = res.summary()
            wall = time.monotonic() - wall0
            single[str(rate)]["cpu_util"] = {
                "ingest": round((svc.usage()["cpu_s"] - cpu_r0) / wall, 2),
                **{k: round(v / wall, 2) for k, v in _delta(stack.infra_cpu(), infra_r0).items()},
            }
            latencies[str(rate)] = res.latency_seconds()
            accepted += int(res.ok.sum())
        cpu_single = svc.usage()["cpu_s"] - cpu0
        infra_single = _delta(stack.infra_cpu(), infra0)
        cpu1 = svc.usage()["cpu_s"]
        infra1 = stack.infra_cpu()
        wall1 = time.monotonic()
        batch = run_load(
            LoadSpec(
                svc.port,
                "/v1/events:batch",
                "application/cloudevents-batch+json",
                None,
                plan.batch_duration,
                f"b-{tag}",
                batch=plan.batch_size,
                customers=100_000,
                connections=4,
                api_key=scenario.api_key,
            )
        )
        cpu_batch = svc.usage()["cpu_s"] - cpu1
        infra_batch = _delta(stack.infra_cpu(), infra1)
        wall_batch = time.monotonic() - wall1
        batch_events = int(batch.ok.sum()) * plan.batch_size
        bulk_prof = None
        if plan.profile_dir is not None and svc.pid is not None:
            # Long enough to cover the upload at the rates seen so far; py-spy stops early if not.
            bulk_prof = Profile(
                svc.pid, max(5, plan.bulk_events // 10_000), plan.profile_dir / "ingest-bulk.txt"
            )
        bulk = _bulk(svc.url, scenario.api_key, plan.bulk_events, tag)
        if bulk_prof is not None:
            bulk["profile"] = bulk_prof.top()
        if "seconds" in bulk:
            bulk["cpu_util"] = {"ingest": round(svc.usage()["cpu_s"] - cpu1 - cpu_batch, 2)}
            bulk["cpu_util"]["ingest"] = round(bulk["cpu_util"]["ingest"] / bulk["seconds"], 2)
        best = max(single.values(), key=lambda s: s["throughput_rps"])
        result: dict[str, Any] = {
            "single": single,
            "single_max_rps": best["throughput_rps"],
            "single_cpu_s_per_1k": round(cpu_single / max(accepted, 1) * 1000, 4),
            "single_infra_cpu_s_per_1k": {
                k: round(v / max(accepted, 1) * 1000, 4) for k, v in infra_single.items()
            },
            "batch": batch.summary(),
            "batch_size": plan.batch_size,
            "batch_eps": batch.summary()["throughput_eps"],
            "batch_cpu_s_per_1k": round(cpu_batch / max(batch_events, 1) * 1000, 4),
            "batch_infra_cpu_s_per_1k": {
                k: round(v / max(batch_events, 1) * 1000, 4) for k, v in infra_batch.items()
            },
            "batch_cpu_util": {
                "ingest": round(cpu_batch / wall_batch, 2),
                **{k: round(v / wall_batch, 2) for k, v in infra_batch.items()},
            },
            "bulk": bulk,
            "profile": profile,
            "_latencies": latencies,
        }
    finally:
        used = stack.stop_service(svc)
    result["peak_rss_mib"] = used["peak_rss_mib"]
    return result


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}


def _bulk(url: str, api_key: str | None, events: int, tag: str) -> dict[str, Any]:
    """One NDJSON upload of `events` lines; 'not implemented' where the endpoint is missing."""
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = "\n".join(event_json(f"k-{tag}", i, 0, 100_000, when) for i in range(events)).encode()
    headers = {"content-type": "application/x-ndjson"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    t0 = time.perf_counter()
    resp = httpx.post(url + "/v1/events:bulk", content=body, headers=headers, timeout=300)
    seconds = time.perf_counter() - t0
    if resp.status_code in (404, 405):
        return {"status": "not implemented"}
    out: dict[str, Any] = {"http_status": resp.status_code, "seconds": round(seconds, 3)}
    try:
        answer = resp.json()
        out.update({k: v for k, v in answer.items() if isinstance(v, int | str)})
    except ValueError:
        pass
    accepted = int(out.get("accepted", 0))
    out["events"] = events
    out["events_per_s"] = round(accepted / seconds, 1)
    return out
