"""The fencing rule of stored offsets (tierflow_common/fencing.py): after any interleaving of
claims (at assignment) and offset writes by several members, a write is accepted only from the
member whose claim on the partition is the latest, and a refused write changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.fencing import FIRST_EPOCH, claimed_epoch, refused

MEMBERS = 3
PARTITIONS = 3

# (member, "claim" | "write", partition, offset)
Op = tuple[int, str, int, int]
ops = st.lists(
    st.tuples(
        st.integers(0, MEMBERS - 1),
        st.sampled_from(["claim", "write"]),
        st.integers(0, PARTITIONS - 1),
        st.integers(0, 1_000),
    ),
    max_size=60,
)


@dataclass
class Store:
    """The stored rows as the SQL keeps them: epoch and next offset per partition."""

    epochs: dict[int, int] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)

    def claim(self, p: int) -> int:
        self.epochs[p] = claimed_epoch(self.epochs.get(p))
        return self.epochs[p]

    def write(self, held: dict[int, int], offsets: dict[int, int]) -> frozenset[int]:
        no = refused(held, self.epochs, offsets)
        if not no:  # all or nothing: the transaction holding the batch commits whole
            self.offsets.update(offsets)
        return no


@given(ops)
def test_only_the_latest_claimant_writes(sequence: list[Op]) -> None:
    store = Store()
    held: list[dict[int, int]] = [{} for _ in range(MEMBERS)]
    latest: dict[int, int] = {}  # partition -> member whose claim is the latest
    for member, kind, p, offset in sequence:
        if kind == "claim":
            before = store.epochs.get(p)
            held[member][p] = store.claim(p)
            assert store.epochs[p] == (FIRST_EPOCH if before is None else before + 1)
            latest[p] = member
            continue
        offsets_before = dict(store.offsets)
        no = store.write(held[member], {p: offset})
        if latest.get(p) == member:
            assert not no
            assert store.offsets[p] == offset
        else:  # never claimed by it, or claimed by another since: refused, nothing written
            assert no == {p}
            assert store.offsets == offsets_before


@given(ops, st.integers(0, MEMBERS - 1))
def test_a_batch_over_a_partition_claimed_away_is_refused_whole(
    sequence: list[Op], member: int
) -> None:
    store = Store()
    held: list[dict[int, int]] = [{} for _ in range(MEMBERS)]
    for m, kind, p, _ in sequence:
        if kind == "claim":
            held[m][p] = store.claim(p)
    batch = {p: 7 for p in range(PARTITIONS)}
    mine = {p for p, epoch in held[member].items() if epoch == store.epochs[p]}
    before = dict(store.offsets)
    no = store.write(held[member], batch)
    assert no == frozenset(range(PARTITIONS)) - mine
    assert store.offsets == (before if no else batch)


@given(st.lists(st.integers(0, MEMBERS - 1), min_size=1, max_size=30))
def test_epochs_only_grow(claimants: list[int]) -> None:
    store = Store()
    seen = [store.claim(0) for _ in claimants]
    assert seen == list(range(FIRST_EPOCH, FIRST_EPOCH + len(claimants)))
