"""Zombie: a classifier paused (SIGSTOP) past its session timeout while events flow, its
partitions moved to the other member of the group, then woken (SIGCONT) with the batch it held:
whatever it tries to write is refused by the fence, no stored offset ever goes backwards, the
woken process goes on working, and the oracle finds nothing lost, nothing counted twice, no
change published twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.harness import (
    PARTITIONS,
    judge,
    paused,
    purchases,
    send,
    wait_drained,
    world,
)
from tests.support import Servers, ServiceProcess

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Size:
    events: int
    customers: int


SHORT = Size(events=1_200, customers=120)
FULL = Size(events=20_000, customers=1_000)
# How long a member holding a short batch waits for more (CONSUMER_LINGER_MS): the longer, the
# likelier the pause falls while the zombie holds a polled batch it will try to write on waking.
# At 100 ms the unfenced tree (scripts/chaos-unfenced.sh) passed: the zombie's client noticed the
# new assignment first and dropped its batch; at 1,500 ms it wrote and moved offsets back.
LINGER_MS = os.environ.get("TIERFLOW_CHAOS_ZOMBIE_LINGER_MS", "1500")


def held(svc: ServiceProcess) -> int:
    """Partitions a classifier took at its latest assignment, from its `partitions_assigned`
    log line: read the same way on a tree without fencing (TIERFLOW_CHAOS_SERVICES_FROM),
    where no claim leaves an owner on the stored-offset rows."""
    count = 0
    for line in svc.log().splitlines():
        if "partitions_assigned" in line:
            with contextlib.suppress(ValueError):
                count = int(json.loads(line).get("count", count))
    return count


async def until(probe: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    "size", [SHORT, pytest.param(FULL, marks=pytest.mark.chaos)], ids=["short", "full"]
)
async def test_a_paused_classifier_is_fenced_out_when_it_wakes(
    servers: Servers, log_dir: Path, size: Size
) -> None:
    events = purchases(size.events, size.customers, seed=5, tag="zombie")
    third = len(events) // 3
    # A longer linger: a member keeping up with the stream spends much of its time holding a
    # polled batch (lingering for more), which is what a zombie wakes up with and may try to
    # commit — if its own client has not noticed first that the group moved on (a race: the
    # refused write is then counted in `fenced_writes`; tests/integration/test_offset_fencing.py
    # shows the refusal deterministically).
    async with world(servers, log_dir, classifiers=2, env={"CONSUMER_LINGER_MS": LINGER_MS}) as w:
        zombie, survivor = w.classifiers
        await send(w, events[:third])

        async def both_own() -> bool:
            # A member's last count stays as it was while it is paused: these add up only once
            # the group's latest assignment has given each member its share.
            mine, theirs = held(zombie), held(survivor)
            return mine > 0 and theirs > 0 and mine + theirs == PARTITIONS

        await until(both_own, "both members holding partitions", 90)
        # Pause the zombie while events flow.
        flowing = asyncio.create_task(send(w, events[third : 2 * third], chunk=25))
        await asyncio.sleep(0.5)
        assert zombie.proc is not None
        with paused(zombie):
            paused_at = time.monotonic()
            await flowing

            async def survivor_owns_all() -> bool:
                return held(survivor) == PARTITIONS

            await until(survivor_owns_all, "the group moving the zombie's partitions", 90)
        paused_s = time.monotonic() - paused_at
        await send(w, events[2 * third :])
        recovery = await wait_drained(w, timeout=180)
        await until(both_own, "the woken zombie holding partitions again", 90)
        assert zombie.proc.poll() is None, "the woken classifier exited"
        name = f"zombie-{'full' if size is FULL else 'short'}"
        result = await judge(w, name, recovery_s=recovery, faults=1)

    assert result.passed, result
    assert result.acknowledged == len(events)
    assert paused_s > 10  # past aiokafka's default session timeout (10 s)
