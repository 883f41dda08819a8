"""Rebalance storm: three classifiers in one group and two notifiers in another while events
flow through the ingest, one random process of the five SIGKILLed or restarted (SIGTERM) every
few seconds, so partitions move again and again mid-batch and deliveries are cut off mid-send:
the oracle finds nothing lost, nothing counted twice, and the log checker no change published
twice, out of order or missing; no stored offset goes backwards; the webhook receiver got every
care action the oracle expects, none under two webhook-ids (the same webhook-id again — a
killed notifier's lease running out — is a redelivery, counted, not a failure)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import World, drain_bound, judge, purchases, send, wait_drained, world
from tests.support import Servers

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    faults: int
    every_s: tuple[float, float]  # pause between faults, drawn in this range
    chunk: int  # events a request; one request every 0.1 s or so, spread over the faults


SHORT = Size(events=1_000, customers=100, faults=3, every_s=(1.5, 3.0), chunk=50)
FULL = Size(events=100_000, customers=1_000, faults=40, every_s=(5.0, 10.0), chunk=200)


async def storm(w: World, size: Size, rnd: random.Random, flowing: asyncio.Task[None]) -> list[str]:
    """Kill or restart a random process (classifier or notifier) every few seconds while events
    flow; the last fault goes to a kind not hit yet, so both kinds are always hit."""
    done: list[str] = []
    hit: set[str] = set()
    for n in range(size.faults):
        await asyncio.sleep(rnd.uniform(*size.every_s))
        last = n == size.faults - 1 or (flowing.done() and len(done) >= 1)
        pool = w.processes
        if last and hit and len(hit) < 2:
            pool = [p for p in w.processes if p.name not in hit]
        victim = rnd.choice(pool)
        hit.add(victim.name)
        how = rnd.choice(["SIGKILL", "restart"])
        if how == "SIGKILL":
            victim.kill()
        else:
            await asyncio.to_thread(victim.stop)
        victim.start(wait_ready=False)
        done.append(f"{how} {victim.log_file.name}")
        if flowing.done() and len(done) >= 2 and len(hit) == 2:
            break
    return done


@pytest.mark.parametrize(
    "size", [SHORT, pytest.param(FULL, marks=pytest.mark.chaos)], ids=["short", "full"]
)
async def test_members_killed_and_restarted_while_events_flow(
    servers: Servers, log_dir: Path, size: Size
) -> None:
    rnd = random.Random(17)
    events = purchases(size.events, size.customers, seed=17, tag="storm")
    async with world(servers, log_dir, classifiers=3, notifiers=2) as w:

        async def flow() -> None:
            for start in range(0, len(events), size.chunk):
                await send(w, events[start : start + size.chunk], chunk=size.chunk)
                await asyncio.sleep(0.1)

        flowing = asyncio.create_task(flow())
        faults = await storm(w, size, rnd, flowing)
        await flowing
        began = time.monotonic()
        for svc in w.processes:
            await asyncio.to_thread(svc.wait_ready, 120)
        # Events arrive faster than three classifiers on two cores apply them.
        drained_s = await wait_drained(w, timeout=drain_bound(size.events))
        recovery = time.monotonic() - began + drained_s
        name = f"rebalance-storm-{'full' if size is FULL else 'short'}"
        result = await judge(w, name, recovery_s=recovery, faults=len(faults))

    assert len(faults) >= 2, faults
    assert any("notifier" in f for f in faults), faults
    assert any("classifier" in f for f in faults), faults
    assert result.passed, result
    assert result.acknowledged == len(events)
    assert result.actions_delivered == result.actions_expected > 0
