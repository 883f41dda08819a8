"""Splitting a polled batch into lanes: parts over disjoint partitions, applied at once.

A batch's transaction spends much of its time waiting on PostgreSQL (its statements and the
commit); a second transaction over other partitions uses that time. The parts never share a
partition, so the records of one key (one customer) stay in one transaction, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import TypeVar

Partition = TypeVar("Partition")
Items = TypeVar("Items", bound=Sized)

# Below this many records a lane's transaction costs more (its own statements and commit)
# than the overlap wins: a batch is split only into lanes of at least this size.
MIN_LANE_RECORDS = 100


def split_lanes(
    batch: Mapping[Partition, Items], lanes: int, minimum: int = MIN_LANE_RECORDS
) -> list[dict[Partition, Items]]:
    """At most `lanes` parts of `batch` (whole partitions each), as even in records as
    whole partitions allow: the largest partition first into the lightest part. Every
    partition with records is in exactly one part; a batch too small to give each part
    `minimum` records is split into fewer (one, below twice `minimum`)."""
    sizes = {p: len(items) for p, items in batch.items() if items}
    total = sum(sizes.values())
    count = max(1, min(lanes, len(sizes), total // max(1, minimum)))
    parts: list[dict[Partition, Items]] = [{} for _ in range(count)]
    loads = [0] * count
    # Ties in size keep the batch's order, so the same batch always splits the same way.
    for partition in sorted(sizes, key=lambda p: -sizes[p]):
        lightest = loads.index(min(loads))
        parts[lightest][partition] = batch[partition]
        loads[lightest] += sizes[partition]
    return [part for part in parts if part]
