"""The consumer applies each offset once even when the broker hands a record out twice."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.consumer import Record, drop_redelivered

TP = TopicPartition("t", 0)


def record(offset: int) -> Record:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=str(offset).encode(),
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1,
        headers=(),
    )


def test_overlapping_batches_in_one_fetch_yield_each_offset_once() -> None:
    polled = {TP: [record(o) for o in (0, 1, 2, 3, 3, 4)]}
    fresh, skipped = drop_redelivered(polled, {TP: 0})
    assert [r.offset for r in fresh[TP]] == [0, 1, 2, 3, 4]
    assert [r.offset for r in skipped] == [3]


def test_records_before_the_committed_position_are_skipped() -> None:
    fresh, skipped = drop_redelivered({TP: [record(3), record(4)]}, {TP: 4})
    assert [r.offset for r in fresh[TP]] == [4]
    assert [r.offset for r in skipped] == [3]


def test_a_batch_of_only_old_records_leaves_nothing_to_apply() -> None:
    fresh, skipped = drop_redelivered({TP: [record(1), record(2)]}, {TP: 5})
    assert fresh == {}
    assert len(skipped) == 2


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=60), st.integers(0, 50))
def test_fresh_offsets_are_strictly_increasing_and_none_is_lost(
    offsets: list[int], start: int
) -> None:
    ordered = sorted(offsets)
    fresh, skipped = drop_redelivered({TP: [record(o) for o in ordered]}, {TP: start})
    kept = [r.offset for r in fresh.get(TP, [])]
    assert kept == sorted(set(kept))
    assert set(kept) == {o for o in offsets if o >= start}
    assert len(kept) + len(skipped) == len(offsets)
