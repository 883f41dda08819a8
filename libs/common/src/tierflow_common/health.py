"""`/livez`, `/readyz` and `/metrics`, the same on every service. The first two answer anyone
(orchestrators probe them); who may read `/metrics` is METRICS_ACCESS (tierflow_common.auth)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tierflow_common.auth import metrics_guard
from tierflow_common.settings import MetricsAccess

ReadinessCheck = Callable[[], Awaitable[None]]


def ops_router(
    checks: Mapping[str, ReadinessCheck],
    *,
    metrics_access: MetricsAccess = "loopback",
    timeout: float = 2.0,
) -> APIRouter:
    """Readiness is the conjunction of the named checks; each raises when its dependency is away."""
    router = APIRouter(tags=["operations"])

    @router.get("/livez", summary="The process is alive")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Broker and database reachable (and, for consumers, partitions assigned)",
        responses={503: {"description": "A dependency is not ready; `checks` says which"}},
    )
    async def readyz() -> JSONResponse:
        async def run(check: ReadinessCheck) -> str:
            try:
                await asyncio.wait_for(check(), timeout)
            except Exception as exc:
                return f"fail: {exc!s}"
            return "ok"

        names = list(checks)
        results = await asyncio.gather(*(run(checks[n]) for n in names))
        report = dict(zip(names, results, strict=True))
        ok = all(r == "ok" for r in results)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": report},
            status_code=200 if ok else 503,
        )

    # The document says what the service does: no key (open), a key optional (loopback: `{}`
    # is "no authentication" among the alternatives), or a read key required.
    guarded = metrics_access != "open"

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=[metrics_guard(metrics_access)] if guarded else [],
        openapi_extra={"security": [{}]} if metrics_access == "loopback" else None,
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
