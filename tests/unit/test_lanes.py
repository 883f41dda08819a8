"""Splitting a polled batch into lanes (tierflow_common/lanes.py): each partition's records
stay whole and in order in exactly one part, and the parts are as even as whole partitions
allow."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.lanes import split_lanes

batches = st.dictionaries(
    st.integers(min_value=0, max_value=23),
    st.lists(st.integers(), max_size=400),
    max_size=24,
)


@given(batches, st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=200))
def test_every_partition_is_in_one_part_whole_and_in_order(
    batch: dict[int, list[int]], lanes: int, minimum: int
) -> None:
    parts = split_lanes(batch, lanes, minimum)
    seen = [p for part in parts for p in part]
    assert sorted(seen) == sorted(p for p, items in batch.items() if items)
    assert len(seen) == len(set(seen))
    for part in parts:
        assert part, "no empty part"
        for partition, items in part.items():
            assert items is batch[partition]


@given(batches, st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=200))
def test_no_more_parts_than_lanes_and_none_below_the_minimum_unless_it_is_the_only_one(
    batch: dict[int, list[int]], lanes: int, minimum: int
) -> None:
    parts = split_lanes(batch, lanes, minimum)
    total = sum(len(items) for items in batch.values())
    assert len(parts) <= lanes
    assert len(parts) <= max(1, total // minimum)


@given(batches, st.integers(min_value=2, max_value=8))
def test_parts_differ_by_at_most_the_largest_partition(
    batch: dict[int, list[int]], lanes: int
) -> None:
    parts = split_lanes(batch, lanes, minimum=1)
    sizes = [sum(len(items) for items in part.values()) for part in parts]
    largest = max((len(items) for items in batch.values()), default=0)
    if len(sizes) > 1:
        assert max(sizes) - min(sizes) <= largest


def test_a_full_batch_over_twelve_partitions_splits_in_two_even_halves() -> None:
    batch = {p: list(range(83 + p % 2)) for p in range(12)}
    parts = split_lanes(batch, 2)
    assert [len(part) for part in parts] == [6, 6]
    assert [sum(map(len, part.values())) for part in parts] == [501, 501]


def test_a_small_batch_stays_in_one_transaction() -> None:
    assert len(split_lanes({0: [1] * 60, 1: [1] * 60}, 2)) == 1
