"""`/customers`: the tiered customer table (search, filter, export) and one customer explained,
with the timeline of changes, care actions and a manual override."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from tierflow_common.auth import Principal, Role, requires
from tierflow_console.adapters.services import ServiceError
from tierflow_console.entrypoints.context import Console
from tierflow_console.entrypoints.web_auth import CsrfChecked, api_key_of, form_time

Reader = Annotated[Principal, requires(Role.READ)]
Operator = Annotated[Principal, requires(Role.OPERATE)]
# The classifier's search parameters, passed through as given (it validates them).
FILTERS = (
    "q", "spend_min", "spend_max", "orders_min", "orders_max",
    "last_purchase_from", "last_purchase_to", "churn_min", "churn_max",
)  # fmt: skip


def _filters(request: Request) -> list[tuple[str, str]]:
    """The search of this request: the range filters and `label=dimension:label` pairs (a form
    sends one `label.<dimension>` select per dimension)."""
    out: list[tuple[str, str]] = []
    for name, value in request.query_params.multi_items():
        if not value:
            continue
        if name in FILTERS:
            out.append((name, value))
        elif name == "label":
            out.append(("label", value))
        elif name.startswith("label."):
            out.append(("label", f"{name.removeprefix('label.')}:{value}"))
    return out


def build_customers(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    classifier, notifier = console.services.classifier, console.services.notifier

    @router.get("/customers", response_class=HTMLResponse)
    async def customers(
        request: Request,
        principal: Reader,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        after: str | None = None,
    ) -> HTMLResponse:
        key = api_key_of(request)
        filters = _filters(request)
        chosen = {v.partition(":")[0]: v.partition(":")[2] for k, v in filters if k == "label"}
        error = None
        page: dict[str, Any] = {"items": [], "next": None, "total": 0}
        distribution: dict[str, dict[str, int]] = {}
        try:
            distribution, page = await asyncio.gather(
                classifier.get("/v1/stats/distribution", key),
                classifier.get(
                    "/v1/customers",
                    key,
                    [*filters, ("limit", str(limit)), *([("after", after)] if after else [])],
                ),
            )
        except ServiceError as exc:
            error = f"{exc.title}: {exc.detail}"
        dimensions = sorted(distribution)
        query = urlencode(filters)
        return console.pages.render(
            request,
            "customers.html",
            principal,
            title="Customers",
            dimensions=dimensions,
            labels={d: sorted(distribution[d]) for d in dimensions},
            chosen=chosen,
            values=dict(request.query_params),
            page=page,
            error=error,
            query=query,
            next_url=(
                f"/customers?{query}&limit={limit}&after={quote(page['next'])}"
                if page.get("next")
                else None
            ),
        )

    @router.get("/customers/export")
    async def export(
        request: Request, _: Reader, format: Annotated[str, Query(pattern="^(csv|xlsx)$")] = "csv"
    ) -> Response:
        """The classifier's export, streamed through as it is written."""
        params = [*_filters(request), ("format", format)]
        context = classifier.stream("/v1/customers:export", api_key_of(request), params)
        try:
            upstream = await context.__aenter__()
        except ServiceError as exc:
            return console.pages.failed(request, "/customers", exc)
        headers = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-disposition", "x-total-count")
        }

        async def body() -> Any:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await context.__aexit__(None, None, None)

        return StreamingResponse(
            body(), media_type=upstream.headers.get("content-type"), headers=headers
        )

    @router.get("/customers/{customer_id}", response_class=HTMLResponse)
    async def customer(
        request: Request, principal: Reader, customer_id: str, as_of: str | None = None
    ) -> HTMLResponse:
        key = api_key_of(request)
        path = f"/v1/customers/{quote(customer_id, safe='')}"
        when = form_time(as_of)
        try:
            now, history, actions, distribution = await asyncio.gather(
                classifier.get(path, key),
                classifier.get(path + "/history", key, {"limit": "200"}),
                notifier.get("/v1/actions", key, {"customer": customer_id, "order": "id"}),
                classifier.get("/v1/stats/distribution", key),
            )
            past = await classifier.get(path, key, {"as_of": when.isoformat()}) if when else None
        except ServiceError as exc:
            return console.pages.render(
                request,
                "customer.html",
                principal,
                title=customer_id,
                customer_id=customer_id,
                error=f"{exc.title}: {exc.detail}",
                status_code=exc.status if exc.status in (404, 403) else 502,
            )
        deliveries = await asyncio.gather(
            *(
                notifier.get("/v1/deliveries", key, {"action": a["action_id"]})
                for a in actions.get("items", [])
            )
        )
        return console.pages.render(
            request,
            "customer.html",
            principal,
            title=customer_id,
            customer_id=customer_id,
            customer=now,
            history=history.get("changes", []),
            actions=actions.get("items", []),
            deliveries={
                a["action_id"]: d.get("items", [])
                for a, d in zip(actions.get("items", []), deliveries, strict=True)
            },
            as_of=when,
            past=past,
            labels={d: sorted(v) for d, v in distribution.items()},
            error=None,
        )

    @router.post("/customers/{customer_id}/override")
    async def set_override(
        request: Request,
        _: Operator,
        __: CsrfChecked,
        customer_id: str,
        dimension: Annotated[str, Form()],
        label: Annotated[str, Form()],
        reason: Annotated[str, Form()],
        expires_at: Annotated[str, Form()] = "",
    ) -> Response:
        back = f"/customers/{quote(customer_id, safe='')}"
        expiry = form_time(expires_at)
        body = {
            "dimension": dimension,
            "label": label,
            "reason": reason,
            "expires_at": expiry.isoformat() if expiry else None,
        }
        try:
            result = await classifier.post(
                f"/v1/customers/{quote(customer_id, safe='')}/overrides", api_key_of(request), body
            )
        except ServiceError as exc:
            return console.pages.failed(request, back, exc)
        until = f" until {body['expires_at']}" if body["expires_at"] else ""
        return console.pages.done(
            request, back, f"Override of {dimension} to {label}{until} sent", result
        )

    @router.post("/customers/{customer_id}/override/{dimension}/clear")
    async def clear_override(
        request: Request, _: Operator, __: CsrfChecked, customer_id: str, dimension: str
    ) -> Response:
        back = f"/customers/{quote(customer_id, safe='')}"
        try:
            result = await classifier.delete(
                f"/v1/customers/{quote(customer_id, safe='')}/overrides/{quote(dimension)}",
                api_key_of(request),
            )
        except ServiceError as exc:
            return console.pages.failed(request, back, exc)
        return console.pages.done(request, back, f"Override of {dimension} cleared", result)

    return router
