"""Poison: 0.1% of the input is records the classifier can never apply — malformed JSON,
schema-invalid data (written straight to the topic: the ingest would refuse them) and refunds
over their order's amount (acknowledged by the ingest, refused by the rules) — interleaved with
valid events on the same partitions: every one lands in the dead-letter topic with its reason
headers, nothing else does, and every valid event behind them is applied (no partition blocks)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import RULES, judge, purchases, send, wait_drained, world
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
FULL = Size(events=30_000, customers=1_000)


def poison(
    valid: list[EmittedEvent], n: int
) -> tuple[list[tuple[bytes, bytes, list[Any]]], list[EmittedEvent]]:
    """`n` records for the topic (malformed, schema-invalid) and refunds for the ingest."""
    raw: list[tuple[bytes, bytes, list[Any]]] = []
    refunds: list[EmittedEvent] = []
    for i in range(n):
        base = valid[(i * 997) % len(valid)]
        kind = i % 3
        if kind == 0:
            rec = encode_event(replace(base, id=f"poison-malformed-{i}"))
            raw.append((rec.key, b'{"order_id": "x", "amount": ', list(rec.headers)))
        elif kind == 1:
            bad = replace(base, id=f"poison-invalid-{i}", data={**base.data, "amount": "lots"})
            rec = encode_event(bad)
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
    "size", [SHORT, pytest.param(FULL, marks=pytest.mark.chaos)], ids=["short", "full"]
)
async def test_poison_records_are_dead_lettered_and_block_nothing(
    servers: Servers, log_dir: Path, size: Size
) -> None:
    valid = purchases(size.events, size.customers, seed=23, tag="poison")
    half = len(valid) // 2
    # Poison on the customers of the first half: a refund then follows its order.
    raw, refunds = poison(valid[:half], max(size.events // 1000, 6))
    async with world(servers, log_dir, classifiers=2) as w:
        await send(w, valid[:half])
        await produce(w.kafka, w.topics.customer_events, raw)
        # The refunds name orders of the first half: over their amount, whatever the order.
        await send(w, refunds)
        await send(w, valid[half:])
        recovery = await wait_drained(w, timeout=180)
        injected = frozenset(dict(headers)["ce_id"].decode() for _, _, headers in raw)
        name = f"poison-{'full' if size is FULL else 'short'}"
        result = await judge(w, name, recovery_s=recovery, injected=injected)

    # The refunds are the only acknowledged events the rules refuse; all poison is dead-lettered.
    assert set(fold(w.acknowledged, RULES).rejected) == {e.id for e in refunds}
    assert result.dead_lettered_expected == len(raw) + len(refunds)
    assert result.passed, result
