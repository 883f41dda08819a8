"""Fencing of the offsets a consumer stores with its state: who may still write a partition.

A partition's stored-offset row carries an owner epoch. Taking the partition at assignment (a
claim) bumps the epoch and hands the new value to the claimant; writing the offset (in the
transaction that applies the batch it ends) is accepted only while the row still carries the
writer's epoch. A member paused past its session timeout (a zombie) whose partitions moved to
another member therefore cannot move an offset backwards or apply a batch again: its write is
refused and the transaction holding its batch rolls back.

The epoch is the database's, not the broker's group generation: an embedded broker that
restarts without its state starts generations over, and the fence must not lock the rightful
owner out then. db/offsets.py applies these rules in SQL (compare-and-set in one statement);
this module states them for the consumer's bookkeeping and for the property tests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

from tierflow_common.exceptions import TierflowError

P = TypeVar("P", bound=Hashable)

FIRST_EPOCH = 1


def claimed_epoch(stored: int | None) -> int:
    """The epoch a claim leaves on a partition's row (`stored` None: no row yet)."""
    return FIRST_EPOCH if stored is None else stored + 1


def refused(held: Mapping[P, int], stored: Mapping[P, int], writing: Iterable[P]) -> frozenset[P]:
    """The partitions of a write that the fence refuses: those the writer holds no epoch for,
    and those whose row carries another epoch than the one the writer took (a later claim)."""
    return frozenset(tp for tp in writing if tp not in held or stored.get(tp) != held[tp])


class OffsetsFenced(TierflowError):
    """Another member claimed these partitions since this one did: its batch is rolled back."""

    def __init__(self, group_id: str, partitions: Iterable[Hashable]) -> None:
        self.partitions = frozenset(partitions)
        super().__init__(f"offsets of {len(self.partitions)} partition(s) fenced in {group_id}")
