"""`/rules`: the rule set in force and its history, a diff, a what-if of a candidate shown as
migration heat maps, and activation with a canary share — all the classifier's rule-set API."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from tierflow_common.auth import Principal, Role, requires
from tierflow_console.adapters.services import ServiceError
from tierflow_console.domain.heatmap import heat_rows
from tierflow_console.entrypoints.context import Console
from tierflow_console.entrypoints.web_auth import CsrfChecked, api_key_of

Reader = Annotated[Principal, requires(Role.READ)]
Admin = Annotated[Principal, requires(Role.ADMIN)]


def build_rules(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    classifier = console.services.classifier

    async def page(
        request: Request,
        principal: Principal,
        *,
        view: str | None = None,
        diff_version: str | None = None,
        candidate: str | None = None,
        simulation: dict[str, Any] | None = None,
        error: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        key = api_key_of(request)
        rules: dict[str, Any] = {}
        shown = diff = None
        try:
            rules = await classifier.get("/v1/rules", key)
            active = (rules.get("active") or {}).get("version")
            wanted = [
                classifier.get(f"/v1/rules/{quote(v, safe='')}", key)
                for v in (view or active,)
                if v
            ]
            if diff_version:
                wanted.append(classifier.get(f"/v1/rules/{quote(diff_version, safe='')}/diff", key))
            found = await asyncio.gather(*wanted)
            shown = found[0] if found and (view or active) else None
            diff = found[-1] if diff_version else None
        except ServiceError as exc:
            error = error or f"{exc.title}: {exc.detail}"
        maps = {
            name: heat_rows(moves.get("matrix", {}))
            for name, moves in ((simulation or {}).get("dimensions") or {}).items()
        }
        return console.pages.render(
            request,
            "rules.html",
            principal,
            title="Rules",
            rules=rules,
            shown=shown,
            diff=diff,
            candidate=candidate if candidate is not None else (shown or {}).get("body", ""),
            simulation=simulation,
            heat_maps=maps,
            error=error,
            status_code=status_code,
        )

    @router.get("/rules", response_class=HTMLResponse)
    async def rules_page(
        request: Request, principal: Reader, view: str | None = None, diff: str | None = None
    ) -> HTMLResponse:
        return await page(request, principal, view=view, diff_version=diff)

    @router.post("/rules/simulate", response_class=HTMLResponse)
    async def simulate(
        request: Request,
        principal: Reader,
        __: CsrfChecked,
        body: Annotated[str, Form()],
        rollout_percent: Annotated[float, Form(gt=0, le=100)] = 100,
    ) -> HTMLResponse:
        try:
            result = await classifier.post(
                "/v1/rules:simulate",
                api_key_of(request),
                params={"rollout_percent": str(rollout_percent)},
                content=body.encode(),
                content_type="application/yaml",
            )
        except ServiceError as exc:
            return await page(
                request,
                principal,
                candidate=body,
                error=f"{exc.title}: {exc.detail}",
                status_code=exc.status if exc.status == 422 else 200,
            )
        result["rollout_percent"] = rollout_percent
        return await page(request, principal, candidate=body, simulation=result)

    @router.post("/rules/activate")
    async def activate(
        request: Request,
        _: Admin,
        __: CsrfChecked,
        version: Annotated[str, Form()],
        expected_active: Annotated[str, Form()],
        rollout_percent: Annotated[float, Form(gt=0, le=100)] = 100,
        note: Annotated[str, Form()] = "",
    ) -> Response:
        body = {
            "version": version,
            "expected_active": expected_active,
            "rollout_percent": rollout_percent,
            "note": note,
        }
        try:
            result = await classifier.post("/v1/rules:activate", api_key_of(request), body)
        except ServiceError as exc:
            return console.pages.failed(request, "/rules", exc)
        return console.pages.done(
            request, "/rules", f"Activated {version} for {rollout_percent:g}% of customers", result
        )

    return router
