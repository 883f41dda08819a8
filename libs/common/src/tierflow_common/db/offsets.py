"""Consumer offsets stored in PostgreSQL, in the same transaction as the state they produced,
fenced by an owner epoch per partition (tierflow_common/fencing.py): a member claims its
partitions at assignment and may write their offsets only while its claim is the latest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.fencing import FIRST_EPOCH, OffsetsFenced, refused


@dataclass(frozen=True)
class Claim:
    """A partition taken at assignment: the epoch its writes must carry, where to read from."""

    epoch: int
    next_offset: int


# One statement: rows are created for partitions never stored (at the offset the member will
# start from) and every claimed row's epoch is bumped. The row lock it takes waits for a
# previous owner's transaction still in flight, so the offsets it returns are the latest.
_CLAIM = text(
    """
    INSERT INTO consumer_offsets AS o (group_id, topic, partition, next_offset, owner_epoch, owner)
    SELECT :group_id, v.topic, v.partition, v.start, :first_epoch, :owner
    FROM unnest(CAST(:topics AS text[]), CAST(:partitions AS integer[]),
                CAST(:starts AS bigint[])) AS v(topic, partition, start)
    ORDER BY v.topic, v.partition
    ON CONFLICT (group_id, topic, partition) DO UPDATE
        SET owner_epoch = o.owner_epoch + 1, owner = EXCLUDED.owner
    RETURNING o.topic, o.partition, o.next_offset, o.owner_epoch
    """
)

# The compare-and-set: a row is written only if it still carries the writer's epoch.
_STORE = text(
    """
    UPDATE consumer_offsets AS o
    SET next_offset = v.next_offset, updated_at = now()
    FROM unnest(CAST(:topics AS text[]), CAST(:partitions AS integer[]),
                CAST(:offsets AS bigint[]), CAST(:epochs AS bigint[]))
         AS v(topic, partition, next_offset, epoch)
    WHERE o.group_id = :group_id AND o.topic = v.topic AND o.partition = v.partition
      AND o.owner_epoch = v.epoch
    RETURNING o.topic, o.partition, o.owner_epoch
    """
)


async def claim_partitions(
    conn: AsyncConnection, group_id: str, starts: Mapping[TopicPartition, int], owner: str
) -> dict[TopicPartition, Claim]:
    """Claim `starts`' partitions for `owner`: their new epochs and stored next offsets (a
    partition never stored gets a row at its start offset from `starts`)."""
    if not starts:
        return {}
    tps = sorted(starts)
    rows = await conn.execute(
        _CLAIM,
        {
            "group_id": group_id,
            "owner": owner,
            "first_epoch": FIRST_EPOCH,
            "topics": [tp.topic for tp in tps],
            "partitions": [tp.partition for tp in tps],
            "starts": [starts[tp] for tp in tps],
        },
    )
    return {TopicPartition(r.topic, r.partition): Claim(r.owner_epoch, r.next_offset) for r in rows}


async def store_offsets(
    conn: AsyncConnection,
    group_id: str,
    offsets: Mapping[TopicPartition, int],
    epochs: Mapping[TopicPartition, int],
) -> None:
    """Write the next offsets of partitions claimed with `epochs`; raises OffsetsFenced (the
    caller's transaction, holding the batch, must roll back) if any was claimed since."""
    if not offsets:
        return
    unheld = refused(epochs, epochs, offsets)
    if unheld:
        raise OffsetsFenced(group_id, unheld)
    tps = sorted(offsets)
    rows = await conn.execute(
        _STORE,
        {
            "group_id": group_id,
            "topics": [tp.topic for tp in tps],
            "partitions": [tp.partition for tp in tps],
            "offsets": [offsets[tp] for tp in tps],
            "epochs": [epochs[tp] for tp in tps],
        },
    )
    stored = {TopicPartition(r.topic, r.partition): r.owner_epoch for r in rows}
    lost = refused(epochs, stored, tps)
    if lost:
        raise OffsetsFenced(group_id, lost)
