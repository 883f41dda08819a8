"""Poison: 0.1% of the input is records the classifier can never apply — malformed JSON,
schema-invalid data, a valid event its rules crash on (written straight to the topic: the
ingest would refuse them) and refunds
over their order's amount (acknowledged by the ingest, refused by the rules) — interleaved with
valid events on the same partitions: every one lands in the dead-letter topic with its reason
headers, nothing else does, and every valid event behind them is applied (no partition blocks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import RULES, World, judge, purchases, send, wait_drained, world
from tests.chaos.oracle import fold
from tests.integration.helpers import produce
from tests.support import Servers
from tierflow_common.contract import EmittedEvent, encode_event

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Size:
    events: int
    customers: int


SHORT = Size(events=1_500, customers=150)
POISON_SHORT = 8  # two of each kind
END_OF_TIME = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
FULL = Size(events=30_000, customers=1_000)


def poison(
    valid: list[EmittedEvent], n: int
) -> tuple[list[tuple[bytes, bytes, list[Any]]], list[EmittedEvent]]:
    """`n` records for the topic (malformed, schema-invalid, a crash) and refunds for the
    ingest. The crash is a purchase dated 9999-12-31: its review deadlines and ledger week
    overflow the calendar, so the classifier raised on it every time and, unable to make its
    ledger partition, retried its batch forever (found by trying inputs; the partition stayed
    blocked). The contract now refuses such a time (`time`: must be before 9000-01-01), so it
    is dead-lettered with that reason like any schema-invalid record."""
    raw: list[tuple[bytes, bytes, list[Any]]] = []
    refunds: list[EmittedEvent] = []
    for i in range(n):
        base = valid[(i * 997) % len(valid)]
        kind = i % 4
        if kind == 0:
            rec = encode_event(replace(base, id=f"poison-malformed-{i}"))
            raw.append((rec.key, b'{"order_id": "x", "amount": ', list(rec.headers)))
        elif kind == 1:
            bad = replace(base, id=f"poison-invalid-{i}", data={**base.data, "amount": "lots"})
            rec = encode_event(bad)
            raw.append((rec.key, rec.value, list(rec.headers)))
        elif kind == 3:
            crashing = replace(base, id=f"poison-crash-{i}", time=END_OF_TIME)
            rec = encode_event(crashing)
            raw.append((rec.key, rec.value, list(rec.headers)))
        else:
            refunds.append(
                replace(
                    base,
                    id=f"poison-over-refund-{i}",
                    type="refund",
                    data={
                        "order_id": base.data["order_id"],
                        "amount": "999999.00",
                        "currency": "USD",
                    },
                )
            )
    return raw, refunds


@pytest.mark.parametrize(
    "size",
    [SHORT, pytest.param(FULL, marks=[pytest.mark.chaos, pytest.mark.timeout(1800)])],
    ids=["short", "full"],
)
async def test_poison_records_are_dead_lettered_and_block_nothing(
    servers: Servers, log_dir: Path, size: Size
) -> None:
    await scenario(servers, log_dir, size)


async def scenario(servers: Servers, log_dir: Path, size: Size) -> None:
    form = "full" if size is FULL else "short"
    valid = purchases(size.events, size.customers, seed=23, tag="poison")
    half = len(valid) // 2
    # Poison on the customers of the first half: a refund then follows its order.
    raw, refunds = poison(valid[:half], max(size.events // 1000, POISON_SHORT))
    clean_rate = None
    if size is FULL:  # the same input without poison: the rate to compare with
        clean = purchases(size.events, size.customers, seed=23, tag="clean")
        async with world(servers, log_dir, classifiers=0) as w:
            await send(w, clean)
            clean_rate = await drain_rate(w, len(clean))
            clean_result = await judge(w, f"poison-clean-{form}", events_per_s=clean_rate)
        assert clean_result.passed, clean_result
    # The classifiers start once every record is on the topic: the drain rate is theirs, over
    # the same backlog (poison interleaved with valid events on the same partitions).
    async with world(servers, log_dir, classifiers=0) as w:
        await send(w, valid[:half])
        await produce(w.kafka, w.topics.customer_events, raw)
        # The refunds name orders of the first half: over their amount, whatever the order.
        await send(w, refunds)
        await send(w, valid[half:])
        began = time.monotonic()
        rate = await drain_rate(w, len(valid) + len(refunds) + len(raw))
        recovery = time.monotonic() - began
        injected = frozenset(dict(headers)["ce_id"].decode() for _, _, headers in raw)
        result = await judge(
            w, f"poison-{form}", recovery_s=recovery, injected=injected, events_per_s=rate
        )
    print(f"poison {form}: {rate:.0f} records/s, clean {clean_rate or 0:.0f} records/s")

    # The refunds are the only acknowledged events the rules refuse; all poison is dead-lettered.
    assert set(fold(w.acknowledged, RULES).rejected) == {e.id for e in refunds}
    assert result.dead_lettered_expected == len(raw) + len(refunds)
    assert result.passed, result
    if clean_rate is not None:
        assert rate >= 0.9 * clean_rate, f"{rate:.0f} records/s with poison, {clean_rate:.0f} clean"


async def drain_rate(w: World, records: int) -> float:
    """Records a second two classifiers started on the backlog get through (from ready to
    drained: their start-up is not counted, their joining the group is)."""
    for _ in range(2):
        w.classifier().start(wait_ready=False)
    for svc in w.classifiers:
        svc.wait_ready(timeout=120)
    seconds = await wait_drained(w, timeout=600)
    return round(records / seconds, 1)
