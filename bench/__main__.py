"""`python -m bench [--quick] [--profile]`: run every benchmark on fresh embedded servers.

Starts PostgreSQL and Tansu on free ports under a temp dir, measures the raw baselines and each
service, writes bench/results/<run>.{json,md,png} and, for full runs, the table in
docs/benchmarks.md, and tears everything down, also on Ctrl-C, SIGTERM or error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import psutil

from bench import baselines, report
from bench.consumers import DrainPlan, run_drain
from bench.e2e import E2EPlan, run_e2e
from bench.ingest import IngestPlan, run_ingest
from bench.notifier import NotifierPlan, run_notifier
from bench.simulate import SimulatePlan, run_simulate
from bench.stack import PARTITIONS, ROOT, Stack
from bench.statements import PROFILE_SETTINGS
from bench.timelag import LagPlan, run_lag

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Sizes:
    produce: int
    upsert_rows: int
    http_rates: list[int]
    http_seconds: float
    batch_seconds: float
    bulk_events: int
    dense: tuple[int, int]  # events, customers
    sparse: tuple[int, int] | None  # None: the quick run drains the dense topic only
    drain_max_s: float
    notifier_events: int
    e2e_rates: list[int]
    e2e_seconds: float
    e2e_drain_s: float
    lag: LagPlan
    simulate: SimulatePlan

    def describe(self) -> str:
        return (
            f"classifier {self.dense[0]:,} events over {self.dense[1]:,}"
            + (f" and {self.sparse[0]:,} over {self.sparse[1]:,}" if self.sparse else "")
            + " customers (time box "
            + f"{self.drain_max_s:.0f} s each from the first commit); "
            + f"notifier {self.notifier_events:,} changes; "
            f"HTTP loads {self.http_seconds:.0f} s each; e2e {self.e2e_seconds:.0f} s per rate; "
            f"raw produce {self.produce:,}; raw upsert {self.upsert_rows:,} rows; "
            f"time-driven lag: {self.lag.due:,} deadlines among {self.lag.customers:,} "
            f"customers; what-if simulation over {self.simulate.customers:,} customers."
        )


# A smoke run of every phase within 2 minutes: one offered load each, the dense drain only.
QUICK = Sizes(
    produce=30_000,
    upsert_rows=30_000,
    http_rates=[2000],
    http_seconds=2,
    batch_seconds=2,
    bulk_events=10_000,
    dense=(40_000, 10_000),
    sparse=None,
    drain_max_s=6,
    notifier_events=5_000,
    e2e_rates=[1000],
    e2e_seconds=2,
    e2e_drain_s=4,
    lag=LagPlan(customers=20_000, due=300, per_step=10, step_s=0.1, grace_s=3.0),
    simulate=SimulatePlan(customers=20_000),
)
# Sized to finish within 10 minutes on a 2-core machine (654 s with larger loads on 2026-11-23).
FULL = Sizes(
    produce=200_000,
    upsert_rows=200_000,
    http_rates=[500, 1000, 2000, 3000, 4000],
    http_seconds=4,
    batch_seconds=5,
    bulk_events=100_000,
    dense=(1_000_000, 100_000),
    sparse=(1_000_000, 1_000_000),
    drain_max_s=30,
    notifier_events=60_000,
    e2e_rates=[1000, 5000, 10000],
    e2e_seconds=8,
    e2e_drain_s=15,
    lag=LagPlan(customers=1_000_000, due=10_000, per_step=50, step_s=0.1, grace_s=5.0),
    simulate=SimulatePlan(customers=1_000_000),
)


def say(message: str) -> None:
    print(f"bench | {time.strftime('%H:%M:%S')} {message}", flush=True)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def phase(r: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one phase; an error is recorded in the results and the other phases still run."""
    try:
        r[key] = fn()
    except Exception as exc:
        say(f"{key} failed: {exc!r}")
        r[key] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}


PHASES = ("ingest", "classifier", "lag", "simulate", "notifier", "e2e")


def _run_ingest(
    r: dict[str, Any],
    lat: dict[str, np.ndarray],
    stack: Stack,
    sizes: Sizes,
    profile_dir: Path | None,
) -> None:
    say("ingest")
    ingest = IngestPlan(
        sizes.http_rates,
        sizes.http_seconds,
        100,
        sizes.batch_seconds,
        sizes.bulk_events,
        profile_dir,
    )
    phase(r, "ingest", lambda: run_ingest(stack, ingest))
    for rate, arr in r["ingest"].get("_latencies", {}).items():
        lat[f"ingest single @ {rate} req/s"] = arr


def _run_classifier(
    r: dict[str, Any], stack: Stack, sizes: Sizes, profile_dir: Path | None
) -> None:
    # The dense drain again with two processes in the group: what `tierflow run
    # --classifiers 2` gets out of this machine's two cores (not in a quick run).
    drains = {
        "classifier_dense": (sizes.dense, 1),
        "classifier_sparse": (sizes.sparse, 1),
        "classifier_dense_2": (sizes.dense if sizes.sparse else None, 2),
    }
    for key, (size, processes) in drains.items():
        if size is None:
            continue
        events, customers = size
        say(
            f"classifier: pre-load {events:,} events over {customers:,} customers, drain "
            f"({processes} process{'es' if processes > 1 else ''})"
        )
        plan = DrainPlan(
            "classifier",
            events,
            customers,
            # The box runs from the first commit, so start-up does not eat into it.
            sizes.drain_max_s,
            consume_baseline=key == "classifier_dense",
            profile_dir=profile_dir if processes == 1 else None,
            processes=processes,
        )
        phase(r, key, functools.partial(run_drain, stack, plan))
        if "raw_consume" in r[key]:
            r["baselines"]["consume"] = r[key].pop("raw_consume")


def _run_lag(r: dict[str, Any], stack: Stack, sizes: Sizes, profile_dir: Path | None) -> None:
    lag = dataclasses.replace(sizes.lag, profile_dir=profile_dir)
    say(f"classifier: time-driven lag, {lag.due:,} deadlines among {lag.customers:,} customers")
    phase(r, "classifier_lag", functools.partial(run_lag, stack, lag))


def run(quick: bool, profile: bool, only: frozenset[str] = frozenset(PHASES)) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    partial = only != frozenset(PHASES)
    run_id = (
        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        + ("-quick" if quick else "-full")
        + ("-only-" + "-".join(sorted(only)) if partial else "")
    )
    profile_dir = RESULTS / f"{run_id}-profiles" if profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r: dict[str, Any] = {
        "run_id": run_id,
        # A partial run is kept in bench/results but never replaces the doc's full table.
        "quick": quick or partial,
        "phases": sorted(only),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "partitions": PARTITIONS,
        "sizes": sizes.describe(),
        "baselines": {},
    }
    lat: dict[str, np.ndarray] = {}
    stack = Stack(PROFILE_SETTINGS if profile else None)
    try:
        say(f"starting PostgreSQL and Tansu under {stack.dir}")
        stack.start()
        b = r["baselines"]
        base = stack.scenario("base")
        say("baseline: raw produce")
        infra0 = stack.infra_cpu()
        b["produce"] = baselines.raw_produce(
            stack.kafka.bootstrap_servers, base.topics.customer_events, sizes.produce
        )
        b["produce"]["server_cpu_s_per_1k"] = stack.server_cpu_s_per_1k(
            infra0, "tansu", sizes.produce
        )
        say("baseline: raw PostgreSQL upsert")
        infra0 = stack.infra_cpu()
        b["pg_upsert"] = baselines.raw_pg_upsert(base.dsn, sizes.upsert_rows, 100_000)
        b["pg_upsert"]["server_cpu_s_per_1k"] = stack.server_cpu_s_per_1k(
            infra0, "postgres", sizes.upsert_rows
        )
        if "ingest" in only:
            say("baseline: trivial FastAPI endpoint (and the load generator's ceiling)")
            b["trivial"] = baselines.trivial_endpoint(
                stack.log_dir, sizes.http_rates, sizes.http_seconds, sizes.batch_seconds
            )
            for rate, arr in b["trivial"]["_latencies"].items():
                lat[f"trivial @ {rate} req/s"] = arr
        if "e2e" in only:
            say("baseline: raw Kafka hop latency")
            b["kafka_hop"] = {}
            for rate in sizes.e2e_rates:
                hop = baselines.kafka_hop(
                    stack.kafka.bootstrap_servers,
                    base.topics.care_actions,
                    rate,
                    sizes.e2e_seconds,
                )
                b["kafka_hop"][str(rate)] = hop
                lat[f"raw Kafka hop @ {rate} ev/s"] = hop["_latencies"]
            b["kafka_hop_default_fetch_wait"] = baselines.kafka_hop(
                stack.kafka.bootstrap_servers,
                base.topics.care_actions,
                sizes.e2e_rates[len(sizes.e2e_rates) // 2],
                sizes.e2e_seconds,
                fetch_wait_ms=500,
            )
        if "ingest" in only:
            _run_ingest(r, lat, stack, sizes, profile_dir)
        if "classifier" in only:
            _run_classifier(r, stack, sizes, profile_dir)
        if "lag" in only:
            _run_lag(r, stack, sizes, profile_dir)
        if "simulate" in only:
            say(f"classifier: what-if simulation over {sizes.simulate.customers:,} customers")
            phase(r, "simulate", functools.partial(run_simulate, stack, sizes.simulate))
        if "notifier" in only:
            say(f"notifier: pre-load {sizes.notifier_events:,} changes, create and deliver")
            notifier = NotifierPlan(
                sizes.notifier_events,
                max(sizes.drain_max_s * 2, 30),
                profile_dir=profile_dir,
            )
            phase(r, "notifier", lambda: run_notifier(stack, notifier))
        if "e2e" in only:
            say(f"end to end at {sizes.e2e_rates} events/s")
            e2e = E2EPlan(sizes.e2e_rates, sizes.e2e_seconds, 10, sizes.e2e_drain_s, profile_dir)
            phase(r, "e2e", lambda: run_e2e(stack, e2e))
            for rate, run_ in r["e2e"].get("runs", {}).items():
                lat[f"e2e 202→tier change @ {rate} ev/s"] = run_["_latencies"]
    finally:
        say("stopping services, broker and PostgreSQL")
        stack.close()
    r["wall_seconds"] = round(time.monotonic() - t0, 1)
    r["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    paths = report.write(r, lat, RESULTS)
    say(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in paths.values())}")
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the services (BENCH_PY_SPY=path)"
    )
    parser.add_argument(
        "--render", type=Path, help="only re-render docs/benchmarks.md from a saved run's JSON"
    )
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases among {', '.join(PHASES)} (baselines always run); "
        "a partial run never updates docs/benchmarks.md",
    )
    args = parser.parse_args(argv)
    only = frozenset(p.strip() for p in args.only.split(",") if p.strip())
    if not only or not only <= set(PHASES):
        parser.error(f"--only takes phases among {', '.join(PHASES)}")
    if args.render is not None:
        report.render_saved(args.render)
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        r = run(args.quick, args.profile, only)
    except KeyboardInterrupt:
        say("interrupted; everything stopped")
        return 130
    print(report.markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
