"""Async SQLAlchemy engine over asyncpg."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tierflow_common.settings import DatabaseSettings

# libpq's TLS parameters (`?sslmode=verify-full&sslrootcert=...`). SQLAlchemy hands a URL's
# query parameters to asyncpg.connect() as keyword arguments, which has none of these (the
# connection would fail on them); asyncpg reads them, as libpq does, from a DSN.
_LIBPQ_TLS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
)


def _json_dumps(value: object) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # a type orjson refuses (e.g. a float subclass): what json did before
        return json.dumps(value)


def engine_arguments(url: str) -> tuple[URL, dict[str, Any]]:
    """The URL without libpq's TLS parameters, and the connect_args that give them to asyncpg
    (as a DSN of those parameters alone: host, user and the rest come from the URL)."""
    parsed = make_url(url)
    tls = {k: v for k, v in parsed.query.items() if k in _LIBPQ_TLS}
    if not tls:
        return parsed, {}
    dsn = "postgresql://?" + urlencode(tls, doseq=True)
    return parsed.difference_update_query(tls), {"dsn": dsn}


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    url, connect_args = engine_arguments(settings.async_url())
    # JSONB columns through orjson: the stdlib json codec was ~8% of the notifier's CPU.
    return create_async_engine(
        url,
        connect_args=connect_args,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        echo=settings.db_echo,
        # Statement parameters are customer data: never in an error message or a log line.
        hide_parameters=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers a query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
