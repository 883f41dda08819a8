"""Consumer offsets stored in PostgreSQL, in the same transaction as the state they produced."""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.tables import consumer_offsets


async def load_offsets(conn: AsyncConnection, group_id: str) -> dict[TopicPartition, int]:
    rows = await conn.execute(
        select(
            consumer_offsets.c.topic, consumer_offsets.c.partition, consumer_offsets.c.next_offset
        ).where(consumer_offsets.c.group_id == group_id)
    )
    return {TopicPartition(r.topic, r.partition): r.next_offset for r in rows}


async def store_offsets(
    conn: AsyncConnection, group_id: str, offsets: Mapping[TopicPartition, int]
) -> None:
    if not offsets:
        return
    stmt = insert(consumer_offsets)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["group_id", "topic", "partition"],
            set_={"next_offset": stmt.excluded.next_offset, "updated_at": func.now()},
        ),
        [
            {"group_id": group_id, "topic": tp.topic, "partition": tp.partition, "next_offset": off}
            for tp, off in sorted(offsets.items())
        ],
    )
