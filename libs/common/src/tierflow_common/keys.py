"""API keys of upstream sources: generated here, stored only as SHA-256 hashes.

Keys carry 256 random bits, so a fast hash is as safe as a slow KDF and keeps authentication
cheap. Used by the ingest (authentication), the CLI (`tierflow keys ...`) and `tierflow run`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import api_keys
from tierflow_common.settings import DatabaseSettings

KEY_PREFIX = "tf"
T = TypeVar("T")


def new_key() -> tuple[str, str]:
    """A fresh (key_id, secret key). The key embeds its id so operators can tell keys apart."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_key(
    conn: AsyncConnection, *, name: str, sources: Sequence[str]
) -> tuple[str, str]:
    key_id, key = new_key()
    await conn.execute(
        insert(api_keys).values(
            key_id=key_id, name=name, key_hash=hash_key(key), sources=sorted(set(sources))
        )
    )
    return key_id, key


async def revoke_key(conn: AsyncConnection, key_id: str) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now().astimezone())
    )
    return bool(result.rowcount)


async def key_is_active(conn: AsyncConnection, key: str) -> bool:
    row = await conn.execute(
        select(api_keys.c.key_id).where(
            api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
        )
    )
    return row.first() is not None


async def list_keys(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            api_keys.c.key_id,
            api_keys.c.name,
            api_keys.c.sources,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        ).order_by(api_keys.c.created_at)
    )
    return [dict(r._mapping) for r in rows]


def _in_transaction(db: DatabaseSettings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(db)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def create_key_sync(db: DatabaseSettings, *, name: str, sources: Sequence[str]) -> tuple[str, str]:
    return _in_transaction(db, lambda conn: create_key(conn, name=name, sources=sources))


def revoke_key_sync(db: DatabaseSettings, key_id: str) -> bool:
    return _in_transaction(db, lambda conn: revoke_key(conn, key_id))


def list_keys_sync(db: DatabaseSettings) -> list[dict[str, Any]]:
    return _in_transaction(db, list_keys)


def key_is_active_sync(db: DatabaseSettings, key: str) -> bool:
    return _in_transaction(db, lambda conn: key_is_active(conn, key))
