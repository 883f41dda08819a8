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
    reported: Mapping[str, ReadinessCheck] | None = None,
    metrics_access: MetricsAccess = "loopback",
    timeout: float = 2.0,
) -> APIRouter:
    """Readiness is the conjunction of the named checks; each raises when its dependency is away.
    `reported` checks are answered beside them but do not make the service unready: a
    dependency it serves its requests without (the ingest's database), whose outage must not
    take it out of a load balancer's rotation; `status` is then `degraded`."""
    reported = reported or {}
    router = APIRouter(tags=["operations"])

    @router.get("/livez", summary="The process is alive")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Broker and database reachable (and, for consumers, partitions assigned)",
        description=(
            "200 `ok`; 200 `degraded` when only a dependency the service serves without is "
            "away (the ingest's database); 503 `unavailable` otherwise. `checks` says which."
        ),
        responses={503: {"description": "A dependency is not ready; `checks` says which"}},
    )
    async def readyz() -> JSONResponse:
        async def run(check: ReadinessCheck) -> str:
            try:
                await asyncio.wait_for(check(), timeout)
            except Exception as exc:
                return f"fail: {exc!s}"
            return "ok"

        every = {**reported, **checks}
        names = list(every)
        results = await asyncio.gather(*(run(every[n]) for n in names))
        report = dict(zip(names, results, strict=True))
        ok = all(report[n] == "ok" for n in checks)
        degraded = any(r != "ok" for r in results)
        status = "unavailable" if not ok else "degraded" if degraded else "ok"
        return JSONResponse({"status": status, "checks": report}, status_code=200 if ok else 503)

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
