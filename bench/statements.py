"""PostgreSQL's side of a profile: where the server's time went, statement by statement.

With `--profile` the bench's PostgreSQL preloads `pg_stat_statements`; a phase resets the
counters of its own database when its py-spy profile starts and reads them when it ends, so
the two profiles cover the same window. Execution time is the server's only (planning is
tracked too); a statement's round trip, the client's encoding and waiting for a lock are not
in it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

# The servers' settings a profiled run starts PostgreSQL with.
PROFILE_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "on",
}

_TOP = """
SELECT calls, rows, total_exec_time AS exec_ms, total_plan_time AS plan_ms,
       wal_bytes::float8 AS wal_bytes, query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time + total_plan_time DESC
"""


async def reset(conn: asyncpg.Connection) -> None:
    """Start counting the statements of `conn`'s database from zero."""
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await conn.execute(
        "SELECT pg_stat_statements_reset(0, "
        "(SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )


async def _top(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(_TOP)]
    finally:
        await conn.close()


def report(dsn: str, out: Path, events: int, n: int = 12) -> dict[str, Any]:
    """Write every statement of the window to `out` (one line each, costliest first); the
    top `n` with the server's milliseconds per 1,000 `events` applied meanwhile."""
    rows = asyncio.run(_top(dsn))
    total = sum(r["exec_ms"] + r["plan_ms"] for r in rows)
    lines = [
        f"{r['exec_ms'] + r['plan_ms']:10.1f} ms {r['calls']:7d} calls {r['rows']:9d} rows "
        f"{r['wal_bytes'] / 1e6:8.1f} MB WAL  {' '.join(r['query'].split())[:160]}"
        for r in rows
    ]
    out.write_text("\n".join([f"{total:10.1f} ms in all, {events} events", *lines]) + "\n")
    per_1k = 1000 / events if events else 0.0
    return {
        "server_ms": round(total, 1),
        "server_ms_per_1k_events": round(total * per_1k, 1),
        "top": [
            {
                "ms_per_1k_events": round((r["exec_ms"] + r["plan_ms"]) * per_1k, 1),
                "share": round((r["exec_ms"] + r["plan_ms"]) / total, 3) if total else None,
                "calls": r["calls"],
                "rows": r["rows"],
                "query": " ".join(r["query"].split())[:120],
            }
            for r in rows[:n]
        ],
    }
