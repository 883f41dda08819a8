"""`/actions`: the care team's queue — most urgent first, then the most value at risk — and
the four things they do with an action (ack, complete, reassign, cancel), all the notifier's."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from tierflow_common.auth import Principal, Role, requires
from tierflow_console.adapters.services import ServiceError
from tierflow_console.entrypoints.context import Console
from tierflow_console.entrypoints.web_auth import CsrfChecked, api_key_of

Reader = Annotated[Principal, requires(Role.READ)]
Operator = Annotated[Principal, requires(Role.OPERATE)]
STATUSES = ("open", "acked", "done", "suppressed", "cancelled")
OUTCOMES = ("done", "resolved", "unreachable", "declined")


def build_actions(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    notifier = console.services.notifier

    @router.get("/actions", response_class=HTMLResponse)
    async def actions(
        request: Request,
        principal: Reader,
        owner: str | None = None,
        status: Annotated[str | None, Query()] = "open",
        after: str | None = None,
    ) -> HTMLResponse:
        params = {
            k: v
            for k, v in {"owner": owner, "status": status, "after": after, "limit": "100"}.items()
            if v
        }
        error = None
        page: dict[str, Any] = {"items": [], "next": None}
        try:
            page = await notifier.get("/v1/actions", api_key_of(request), params)
        except ServiceError as exc:
            error = f"{exc.title}: {exc.detail}"
        query = urlencode({k: v for k, v in params.items() if k in ("owner", "status")})
        return console.pages.render(
            request,
            "actions.html",
            principal,
            title="Actions",
            page=page,
            error=error,
            owner=owner or "",
            status=status or "",
            statuses=STATUSES,
            outcomes=OUTCOMES,
            back=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            next_url=f"/actions?{query}&after={quote(page['next'])}" if page.get("next") else None,
        )

    async def act(
        request: Request, action_id: str, verb: str, body: object, back: str, said: str
    ) -> Response:
        back = back if back.startswith("/actions") else "/actions"
        try:
            result = await notifier.post(
                f"/v1/actions/{quote(action_id, safe='')}/{verb}", api_key_of(request), body
            )
        except ServiceError as exc:
            return console.pages.failed(request, back, exc)
        return console.pages.done(request, back, said, result)

    @router.post("/actions/{action_id}/ack")
    async def ack(
        request: Request,
        _: Operator,
        __: CsrfChecked,
        action_id: str,
        back: Annotated[str, Form()] = "/actions",
    ) -> Response:
        return await act(request, action_id, "ack", None, back, f"Action {action_id} acked")

    @router.post("/actions/{action_id}/complete")
    async def complete(
        request: Request,
        _: Operator,
        __: CsrfChecked,
        action_id: str,
        outcome: Annotated[str, Form()],
        back: Annotated[str, Form()] = "/actions",
    ) -> Response:
        return await act(
            request,
            action_id,
            "complete",
            {"outcome": outcome},
            back,
            f"Action {action_id} completed ({outcome})",
        )

    @router.post("/actions/{action_id}/reassign")
    async def reassign(
        request: Request,
        _: Operator,
        __: CsrfChecked,
        action_id: str,
        owner: Annotated[str, Form()],
        back: Annotated[str, Form()] = "/actions",
    ) -> Response:
        return await act(
            request,
            action_id,
            "reassign",
            {"owner": owner, "note": None},
            back,
            f"Action {action_id} reassigned to {owner}",
        )

    @router.post("/actions/{action_id}/cancel")
    async def cancel(
        request: Request,
        _: Operator,
        __: CsrfChecked,
        action_id: str,
        reason: Annotated[str, Form()],
        back: Annotated[str, Form()] = "/actions",
    ) -> Response:
        return await act(
            request,
            action_id,
            "cancel",
            {"reason": reason},
            back,
            f"Action {action_id} cancelled",
        )

    return router
