"""The consumer's lanes: a backlog is polled across partitions so a batch can be split, the
parts run in transactions at once, and a part that fails transiently is retried alone (the
other is applied once). The same stream through one lane and through two, on the real
servers, ends the same: tests/e2e/test_classifier_group.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from tierflow_common.consumer import Record, StatefulConsumer
from tierflow_common.settings import ConsumerSettings, KafkaSettings


def rec(partition: int, offset: int) -> Record:
    return ConsumerRecord("t", partition, offset, 0, 0, b"k", b"v", None, 1, 1, ())


def tp(partition: int) -> TopicPartition:
    return TopicPartition("t", partition)


class FakeKafka:
    """Buffered records per partition, handed out as aiokafka does: a poll takes from one
    partition's buffer as far as it goes before the next."""

    def __init__(self, backlog: dict[int, int]) -> None:
        self.buffers = {tp(p): [rec(p, o) for o in range(n)] for p, n in backlog.items()}
        self.committed: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.buffers)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        for part in sorted(partitions or self.buffers):
            room = max_records - sum(len(r) for r in out.values())
            if room <= 0:
                break
            taken, self.buffers[part] = self.buffers[part][:room], self.buffers[part][room:]
            if taken:
                out[part] = taken
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


def consumer(kafka: FakeKafka, lanes: int, max_batch: int = 1_000) -> StatefulConsumer:
    c = StatefulConsumer(
        engine=cast(Any, None),
        kafka=KafkaSettings(),
        settings=ConsumerSettings(max_batch=max_batch),
        group_id="g",
        topics=["t"],
        dlq_topic="t.dlq",
        producer_name="p",
        handler=cast(Any, None),
        lanes=lanes,
    )
    c._consumer = cast(Any, kafka)
    return c


async def test_with_two_lanes_a_backlog_is_polled_from_two_partitions_half_each() -> None:
    kafka = FakeKafka({0: 5_000, 1: 5_000, 2: 5_000})
    batch = await consumer(kafka, lanes=2)._poll(cast(Any, kafka))
    assert {p: len(r) for p, r in batch.items()} == {tp(0): 500, tp(1): 500}


async def test_a_backlog_in_one_partition_still_fills_the_batch_without_lingering() -> None:
    kafka = FakeKafka({0: 5_000})
    batch = await consumer(kafka, lanes=2)._poll(cast(Any, kafka))
    assert [r.offset for r in batch[tp(0)]] == list(range(1_000))


async def test_with_one_lane_the_poll_is_what_aiokafka_gives() -> None:
    kafka = FakeKafka({0: 5_000, 1: 5_000})
    batch = await consumer(kafka, lanes=1)._poll(cast(Any, kafka))
    assert {p: len(r) for p, r in batch.items()} == {tp(0): 1_000}


async def test_no_top_up_after_a_seek_that_came_while_waiting_for_the_lock() -> None:
    kafka = FakeKafka({0: 3_000, 1: 3_000})
    c = consumer(kafka, lanes=2)
    await c.batch_lock.acquire()  # the rebalance listener holds it, about to seek

    async def seek_then_release() -> None:
        await asyncio.sleep(0.01)
        c._seeks += 1
        c.batch_lock.release()

    listener = asyncio.create_task(seek_then_release())
    batch = await c._poll(cast(Any, kafka))
    await listener
    assert list(batch) == [tp(0)], "nothing taken from the sought position"


async def test_a_part_that_fails_transiently_is_retried_alone() -> None:
    kafka = FakeKafka({0: 0, 1: 0})
    c = consumer(kafka, lanes=2)
    c._epochs = {tp(0): 1, tp(1): 1}
    batch = {tp(0): [rec(0, o) for o in range(300)], tp(1): [rec(1, o) for o in range(300)]}
    applied: list[list[int]] = []
    running = 0
    overlapped = False
    failed_once = False

    async def commit_batch(
        part: dict[TopicPartition, list[Record]], forced_dead: object = None
    ) -> dict[TopicPartition, int]:
        nonlocal running, overlapped, failed_once
        running += 1
        overlapped = overlapped or running > 1
        await asyncio.sleep(0.01)  # the transaction's round trips
        running -= 1
        if tp(1) in part and not failed_once:
            failed_once = True
            raise TimeoutError("database unreachable")
        applied.append(sorted(t.partition for t in part))
        return {t: recs[-1].offset + 1 for t, recs in part.items()}

    c._commit_batch = commit_batch  # type: ignore[method-assign,assignment]
    await c._process_until_done(batch, c._seeks)
    assert overlapped, "the two parts ran in transactions at once"
    assert sorted(applied) == [[0], [1]], "each part applied once, the failed one on retry"
    await asyncio.sleep(0)  # the background Kafka commit
    assert c._kafka_commits is not None
    await c._kafka_commits
    assert kafka.committed == {tp(0): 300, tp(1): 300}
