"""A webhook endpoint that answers 500 for N minutes: does it delay anything else, and does it
receive every pending action once per webhook-id when it is healthy again?

Run: ``.venv/bin/python -m scripts.webhook_outage [--minutes 10] [--rate 25]`` (writes
``docs/notifier-outage.md``; ``--out`` to write elsewhere).

Everything is real and fresh in a temp dir: embedded PostgreSQL, the Tansu broker, the notifier
as its own process with its production delivery settings (15 attempts, backoff 1 s doubling to
600 s with jitter, breaker after 5 failures with a 30 s cool-down), and two webhook receivers as
separate processes (bench/webhook_receiver.py: every Standard Webhooks signature verified,
webhook-ids and duplicates counted). A steady stream of classification changes (one care action
each) runs before, during and after the outage; the "failing" receiver answers 500 for the
outage window, then 200 again. Latency is an action's `created_at` → its arrival at a receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psutil
from bench.kafka_io import change_record
from bench.notifier import bench_playbook
from bench.stack import ROOT, Stack
from bench.webhook_receiver import Receiver

from tierflow_common.kafka import make_producer
from tierflow_common.settings import KafkaSettings

HEALTHY, FAILING = "healthy", "failing"


def say(message: str) -> None:
    print(f"outage | {time.strftime('%H:%M:%S')} {message}", flush=True)


class Stream:
    """Open-loop: change i is sent at start + i / rate, whatever the broker or notifier do."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self.prefix = f"out-{uuid.uuid4().hex[:6]}"
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        producer = make_producer(KafkaSettings(bootstrap_servers=self.bootstrap), linger_ms=2)
        await producer.start()
        try:
            start = time.monotonic()
            while not self._stop.is_set():
                due = start + self.sent / self.rate
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, 0.2))
                    continue
                rec = change_record(self.prefix, self.sent)
                await producer.send_and_wait(
                    self.topic, value=rec.value, key=rec.key, headers=rec.headers
                )
                self.sent += 1
        finally:
            await producer.stop()


async def _db(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def db(dsn: str, sql: str, *args: Any) -> Any:
    return asyncio.run(_db(dsn, sql, *args))


async def _action_ids(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["action_id"] for r in await conn.fetch("SELECT action_id FROM care_actions")}
    finally:
        await conn.close()


def backlog(dsn: str, created_before: datetime | None = None) -> int:
    """The failing endpoint's deliveries not yet delivered (of actions created before ...)."""
    sql = (
        "SELECT count(*) FROM care_deliveries d JOIN care_actions a USING (action_id) "
        "WHERE d.endpoint = $1 AND d.state <> 'delivered'"
    )
    if created_before is None:
        return int(db(dsn, sql, FAILING))
    return int(db(dsn, sql + " AND a.created_at < $2", FAILING, created_before))


def run(minutes: float, rate: float, before_s: float, after_s: float) -> dict[str, Any]:
    stack = Stack()
    receivers: dict[str, Receiver] = {}
    r: dict[str, Any] = {
        "minutes": minutes,
        "rate": rate,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip(),
    }
    try:
        say(f"PostgreSQL and Tansu under {stack.dir}")
        stack.start()
        scenario = stack.scenario("outage")
        for name in (HEALTHY, FAILING):
            receivers[name] = Receiver(stack.log_dir)
            receivers[name].start()
        env = {
            **scenario.env,
            "NOTIFIER_PLAYBOOKS_FILE": str(bench_playbook(stack.dir)),
            "NOTIFIER_WEBHOOKS": json.dumps([rec.endpoint(n) for n, rec in receivers.items()]),
        }
        svc = stack.start_service("notifier", replace(scenario, env=env))
        svc.wait_ready()
        stream = Stream(stack.kafka.bootstrap_servers, scenario.topics.classification_changed, rate)
        stream.start()
        t0 = time.time()
        say(f"steady stream at {rate:g} actions/s; both endpoints healthy for {before_s:.0f} s")
        time.sleep(before_s)
        receivers[FAILING].set_status(500)
        t1 = time.time()
        say(f"'{FAILING}' answers 500 for {minutes:g} min")
        samples: list[tuple[float, int]] = []
        while time.time() < t1 + minutes * 60:
            samples.append((time.time() - t1, backlog(scenario.dsn)))
            time.sleep(min(10.0, max(0.0, t1 + minutes * 60 - time.time())))
        at_recovery = backlog(scenario.dsn)
        dead_at_recovery = int(
            db(scenario.dsn, "SELECT count(*) FROM care_deliveries WHERE state = 'dead'")
        )
        receivers[FAILING].set_status(200)
        t2 = time.time()
        t2_dt = datetime.fromtimestamp(t2, UTC)
        say(f"'{FAILING}' healthy again; backlog {at_recovery:,}; stream goes on {after_s:.0f} s")
        drained_after: float | None = None
        while time.time() < t2 + max(after_s, 900):
            if drained_after is None and backlog(scenario.dsn, t2_dt) == 0:
                drained_after = time.time() - t2
                say(f"backlog drained {drained_after:.1f} s after recovery")
            if drained_after is not None and time.time() >= t2 + after_s:
                break
            time.sleep(0.25)
        stream.stop()
        t3 = time.time()
        sent = stream.sent
        say(f"stream stopped after {sent:,} changes; waiting for every delivery")
        deadline = time.time() + 300
        while time.time() < deadline:
            created = int(db(scenario.dsn, "SELECT count(*) FROM care_actions"))
            if created >= sent and all(rec.stats()["unique"] >= sent for rec in receivers.values()):
                break
            time.sleep(0.5)
        ids = asyncio.run(_action_ids(scenario.dsn))
        stats = {n: rec.stats() for n, rec in receivers.items()}
        got = {n: rec.ids() for n, rec in receivers.items()}
        healthy = receivers[HEALTHY]
        r.update(
            {
                "sent": sent,
                "actions": len(ids),
                "outage_s": round(t2 - t1, 1),
                "healthy_latency_ms": {
                    "before": healthy.stats(t0 + 10, t1)["latency_ms"],
                    "during": healthy.stats(t1, t2)["latency_ms"],
                    "after": healthy.stats(t2, t3)["latency_ms"],
                },
                "healthy_in_window": {
                    "before": healthy.stats(t0 + 10, t1)["in_window"],
                    "during": healthy.stats(t1, t2)["in_window"],
                },
                "failing_refused": stats[FAILING]["refused"],
                "backlog_samples": samples,
                "backlog_at_recovery": at_recovery,
                "dead_at_recovery": dead_at_recovery,
                "drained_after_s": round(drained_after, 1) if drained_after is not None else None,
                "failing_latency_after_ms": receivers[FAILING].stats(t2, None)["latency_ms"],
                "receivers": {
                    n: {
                        "unique": s["unique"],
                        "duplicates": s["duplicates"],
                        "bad_signatures": s["bad_signatures"],
                        "requests": s["requests"],
                        "verified": s["verified"],
                        "missing": len(ids - got[n]),
                        "unknown": len(got[n] - ids),
                    }
                    for n, s in stats.items()
                },
                "dead_at_end": int(
                    db(scenario.dsn, "SELECT count(*) FROM care_deliveries WHERE state = 'dead'")
                ),
            }
        )
        stack.stop_service(svc)
    finally:
        for rec in receivers.values():
            rec.stop()
        stack.close()
    return r


def _lat(d: dict[str, Any]) -> str:
    if not d:
        return "—"
    return " / ".join(f"{d[k]:,.0f}" for k in ("p50", "p99", "max"))


def markdown(r: dict[str, Any], command: str) -> str:
    rec = r["receivers"]
    h, f = rec[HEALTHY], rec[FAILING]
    ok = (
        h["missing"] == f["missing"] == 0
        and h["duplicates"] == f["duplicates"] == 0
        and h["bad_signatures"] == f["bad_signatures"] == 0
        and r["dead_at_end"] == 0
        and r["actions"] == r["sent"]
    )
    lat = r["healthy_latency_ms"]
    peak = max((b for _, b in r["backlog_samples"]), default=0)
    drained = r["drained_after_s"]
    rows = [
        (f"`{HEALTHY}` latency before the outage, p50 / p99 / max ms", _lat(lat["before"])),
        (f"`{HEALTHY}` latency during the outage, p50 / p99 / max ms", _lat(lat["during"])),
        (
            f"`{HEALTHY}` latency after recovery (while `{FAILING}` drains), p50 / p99 / max ms",
            _lat(lat["after"]),
        ),
        (
            f"`{HEALTHY}` actions received during the outage",
            f"{r['healthy_in_window']['during']:,}",
        ),
        (f"`{FAILING}`: requests answered 500 during the outage", f"{r['failing_refused']:,}"),
        (
            f"`{FAILING}`: backlog at recovery (deliveries pending)",
            f"{r['backlog_at_recovery']:,} (peak sampled {peak:,})",
        ),
        (
            f"`{FAILING}`: dead deliveries at recovery / at the end",
            f"{r['dead_at_recovery']} / {r['dead_at_end']}",
        ),
        (
            f"`{FAILING}`: time from healthy again to backlog delivered",
            f"{drained:,.1f} s" if drained is not None else "not drained",
        ),
        (
            f"`{FAILING}`: latency of deliveries after recovery, p50 / p99 / max ms",
            _lat(r["failing_latency_after_ms"]),
        ),
        (
            f"requests received (`{HEALTHY}` / `{FAILING}`)",
            f"{h['requests']:,} / {f['requests']:,}",
        ),
    ]
    table = "| figure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    return f"""# Notifier: one webhook endpoint down for {r["minutes"]:g} minutes

Generated by `{command}` (scripts/webhook_outage.py).
Run {r["started_at"]}, commit `{r["commit"]}`, {r["cores"]} cores, {r["memory_gib"]} GiB RAM,
Python {r["python"]}; the 2 cores are shared with other work, so latencies are indicative.

Set-up: one notifier process (production delivery settings: 15 attempts, backoff 1 s doubling
to 600 s with jitter, circuit breaker after 5 consecutive failures with a 30 s cool-down),
two webhook receivers as separate processes verifying every Standard Webhooks signature, and a
steady stream of {r["rate"]:g} classification changes/s (one care action each) before, during
and after the outage. `{FAILING}` answers HTTP 500 for {r["outage_s"]:,.0f} s, then 200.

**Result: {"every action reached both endpoints exactly once per webhook-id" if ok else "CHECK"}**
— {r["actions"]:,} actions from {r["sent"]:,} changes; missing at `{HEALTHY}` / `{FAILING}`:
{h["missing"]} / {f["missing"]}; duplicate webhook-ids {h["duplicates"]} / {f["duplicates"]};
bad signatures {h["bad_signatures"]} / {f["bad_signatures"]}; dead deliveries
{r["dead_at_end"]}.

{table}

How it holds:
- Each endpoint has its own worker, HTTP connections and circuit breaker; the consumer only
  inserts delivery rows, so the failing endpoint cannot hold up `{HEALTHY}` or action creation.
- While the breaker is open no attempt is spent: one probe per cool-down, so a delivery does not
  reach its 15-attempt dead state during a {r["minutes"]:g}-minute outage.
- When a probe succeeds, the endpoint's failed-and-waiting deliveries are made due at once
  (their backoff protected a sick endpoint; it would now only delay a healthy one), so the
  backlog drains at full speed instead of over the next `backoff_max` minutes. The drain time
  above is mostly the breaker's cool-down (up to 30 s until the first probe) plus sending.
- The webhook-id is the action id, stable across retries; the receiver dedupes on it.

Raw figures: `{json.dumps({k: v for k, v in r.items() if k != "backlog_samples"})}`
"""


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.webhook_outage", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="outage length")
    parser.add_argument("--rate", type=float, default=25.0, help="changes (actions) per second")
    parser.add_argument("--before", type=float, default=60.0, help="healthy seconds before")
    parser.add_argument("--after", type=float, default=60.0, help="stream seconds after")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notifier-outage.md")
    args = parser.parse_args()
    r = run(args.minutes, args.rate, args.before, args.after)
    command = ".venv/bin/python -m scripts.webhook_outage" + (
        f" --minutes {args.minutes:g}" if args.minutes != 10 else ""
    )
    args.out.write_text(markdown(r, command))
    say(f"wrote {args.out}")
    ok = all(v["missing"] == 0 and v["duplicates"] == 0 for v in r["receivers"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
