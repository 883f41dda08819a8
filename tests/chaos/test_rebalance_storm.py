"""Rebalance storm: three classifiers in one group while events flow through the ingest, one
random member SIGKILLed or restarted (SIGTERM) every few seconds, so partitions move again and
again mid-batch: the oracle finds nothing lost, nothing counted twice, and the log checker no
change published twice, out of order or missing; no stored offset goes backwards."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import World, judge, purchases, send, wait_drained, world
from tests.support import Servers

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Size:
    events: int
    customers: int
    faults: int
    every_s: tuple[float, float]  # pause between faults, drawn in this range


SHORT = Size(events=1_000, customers=100, faults=3, every_s=(1.5, 3.0))
FULL = Size(events=50_000, customers=1_000, faults=40, every_s=(5.0, 10.0))


async def storm(w: World, size: Size, rnd: random.Random, flowing: asyncio.Task[None]) -> list[str]:
    """Kill or restart a random classifier every few seconds while events flow."""
    done: list[str] = []
    for _ in range(size.faults):
        await asyncio.sleep(rnd.uniform(*size.every_s))
        victim = rnd.choice(w.classifiers)
        how = rnd.choice(["SIGKILL", "restart"])
        if how == "SIGKILL":
            victim.kill()
        else:
            await asyncio.to_thread(victim.stop)
        victim.start(wait_ready=False)
        done.append(f"{how} {victim.log_file.name}")
        if flowing.done() and len(done) >= 2:
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
    async with world(servers, log_dir, classifiers=3) as w:

        async def flow() -> None:
            chunk = 50
            for start in range(0, len(events), chunk):
                await send(w, events[start : start + chunk], chunk=chunk)
                await asyncio.sleep(0.1)  # spread over the faults

        flowing = asyncio.create_task(flow())
        faults = await storm(w, size, rnd, flowing)
        await flowing
        began = time.monotonic()
        for svc in w.classifiers:
            await asyncio.to_thread(svc.wait_ready, 120)
        recovery = time.monotonic() - began + await wait_drained(w, timeout=300)
        name = f"rebalance-storm-{'full' if size is FULL else 'short'}"
        result = await judge(w, name, recovery_s=recovery, faults=len(faults))

    assert len(faults) >= 2, faults
    assert result.passed, result
    assert result.acknowledged == len(events)
