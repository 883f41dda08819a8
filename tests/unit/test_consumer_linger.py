"""The consumer's linger tops a short batch up, and never takes records past a seek (they
would be dropped with the stale batch and not handed out again)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from tierflow_common.consumer import Record, StatefulConsumer
from tierflow_common.settings import ConsumerSettings, KafkaSettings

TP = TopicPartition("t", 0)


def rec(offset: int) -> Record:
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", b"v", None, 1, 1, ())


class FakeKafka:
    def __init__(self, pending: list[Record]) -> None:
        self.pending = pending
        self.polls = 0

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        self.polls += 1
        taken, self.pending = self.pending[:max_records], self.pending[max_records:]
        return {TP: taken} if taken else {}


def consumer(linger_ms: int) -> StatefulConsumer:
    return StatefulConsumer(
        engine=cast(Any, None),
        kafka=KafkaSettings(),
        settings=ConsumerSettings(linger_ms=linger_ms, max_batch=10),
        group_id="g",
        topics=["t"],
        dlq_topic="t.dlq",
        producer_name="p",
        handler=cast(Any, None),
    )


async def test_a_short_batch_is_topped_up_with_what_arrived_meanwhile() -> None:
    c = consumer(linger_ms=5)
    kafka = FakeKafka([rec(2), rec(3)])
    batch = await c._linger(cast(Any, kafka), {TP: [rec(0), rec(1)]}, c._seeks)
    assert [r.offset for r in batch[TP]] == [0, 1, 2, 3]


async def test_after_a_seek_nothing_more_is_taken() -> None:
    c = consumer(linger_ms=20)
    kafka = FakeKafka([rec(0), rec(1)])  # re-fetched from the sought position
    polled_at = c._seeks

    async def rebalance() -> None:
        await asyncio.sleep(0.005)
        async with c.batch_lock:  # as the rebalance listener seeks
            c._seeks += 1

    task = asyncio.create_task(rebalance())
    batch = await c._linger(cast(Any, kafka), {TP: [rec(0)]}, polled_at)
    await task
    assert kafka.polls == 0
    assert kafka.pending == [rec(0), rec(1)]  # still there for the next, fresh poll
    assert [r.offset for r in batch[TP]] == [0]


async def test_no_linger_no_wait() -> None:
    c = consumer(linger_ms=0)
    kafka = FakeKafka([rec(1)])
    assert (await c._linger(cast(Any, kafka), {TP: [rec(0)]}, c._seeks)) == {TP: [rec(0)]}
    assert kafka.polls == 0
