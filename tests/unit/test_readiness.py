"""`/readyz`: the checks a service needs make it unready when one fails; a `reported` check (a
dependency it serves without, the ingest's database) is shown but leaves it ready, `degraded`."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tierflow_common.health import ReadinessCheck, ops_router


async def ok() -> None:
    return None


async def away() -> None:
    raise ConnectionRefusedError("connection refused")


async def readyz(
    checks: dict[str, ReadinessCheck], reported: dict[str, ReadinessCheck]
) -> tuple[int, dict[str, object]]:
    app = FastAPI()
    app.include_router(ops_router(checks, reported=reported))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        resp = await http.get("/readyz")
    return resp.status_code, resp.json()


async def test_a_reported_dependency_away_leaves_the_service_ready_but_degraded() -> None:
    assert await readyz({"broker": ok}, {"database": ok}) == (
        200,
        {"status": "ok", "checks": {"database": "ok", "broker": "ok"}},
    )
    status, body = await readyz({"broker": ok}, {"database": away})
    assert (status, body["status"]) == (200, "degraded")
    assert body["checks"]["database"] == "fail: connection refused"  # type: ignore[index]
    status, body = await readyz({"broker": away}, {"database": ok})
    assert (status, body["status"]) == (503, "unavailable")
