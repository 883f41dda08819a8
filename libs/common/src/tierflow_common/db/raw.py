"""The asyncpg connection under a SQLAlchemy AsyncConnection, inside its transaction.

Hot write paths (the classifier's state, history and outbox) send one array-parameter
statement per batch straight through asyncpg: no SQL compilation per batch, no per-row bind
parameters, values encoded by asyncpg's C codecs. The statement runs in the SQLAlchemy
connection's transaction, so it commits or rolls back with everything else in the batch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection


async def raw_connection(conn: AsyncConnection) -> Any:
    """The asyncpg.Connection of `conn`, with the SQLAlchemy transaction begun on it."""
    fairy = await conn.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    # SQLAlchemy's asyncpg adapter issues BEGIN lazily, on its first statement; begin now so a
    # statement sent straight through asyncpg is inside the transaction, not autocommitted.
    if adapted.isolation_level != "autocommit" and adapted._transaction is None:
        await adapted._start_transaction()
    return adapted._connection
