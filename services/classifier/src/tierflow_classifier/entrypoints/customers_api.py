"""The console's classifier API: customer search and export, manual overrides, and the
distribution over time (README "Customers: search, export, overrides"; the ops console is
built against exactly these paths, parameters and JSON keys).

Query parameters are taken as text and parsed by domain/customer_filter.py, so a bad one is
answered as every rejection is, a problem document naming it, not FastAPI's own 422 body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters import customer_export, customer_search, distribution_store
from tierflow_classifier.adapters.churn_store import ChurnModelHolder
from tierflow_classifier.adapters.clock import Clock
from tierflow_classifier.adapters.customer_search import CustomerRow, Scoring
from tierflow_classifier.domain.classify import rule_set_churn_config
from tierflow_classifier.domain.customer_filter import (
    CustomerFilter,
    FieldProblem,
    parse_filter,
    parse_page,
)
from tierflow_classifier.domain.overrides import allowed_labels
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.service_layer.overrides import (
    OverrideRejected,
    Publisher,
    Requested,
    request_override,
)
from tierflow_common.auth import Principal, Role, requires
from tierflow_common.errors_http import PROBLEM_SCHEMA, problem
from tierflow_common.exceptions import BrokerUnavailable

READ = [requires(Role.READ)]
_PROBLEM = {"content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}
SNAPSHOT_LIMIT = 10_000


class FilterQuery(BaseModel):
    """The search's filter, as text (parsed by domain/customer_filter.py)."""

    q: str | None = Field(default=None, description="Customer-id prefix")
    label: list[str] = Field(
        default_factory=list,
        description="dimension:label; repeat: OR within a dimension, AND across dimensions",
    )
    spend_min: str | None = Field(default=None, description="Decimal, net lifetime spend")
    spend_max: str | None = None
    orders_min: str | None = Field(default=None, description="Integer, lifetime purchases")
    orders_max: str | None = None
    last_purchase_from: str | None = Field(default=None, description="ISO date or time")
    last_purchase_to: str | None = Field(default=None, description="ISO date (whole day) or time")
    churn_min: str | None = Field(
        default=None, description="0..1, churn probability; unscored customers are left out"
    )
    churn_max: str | None = None

    def params(self) -> dict[str, list[str]]:
        return {
            k: v if isinstance(v, list) else [v]
            for k, v in self.model_dump().items()
            if v is not None
        }


class SearchQuery(FilterQuery):
    limit: str | None = Field(default=None, description="1..1000, default 50")
    after: str | None = Field(default=None, description="`next` of the previous page")


class ExportQuery(FilterQuery):
    format: str = Field(default="csv", description="csv or xlsx")


class CriteriaOut(BaseModel):
    net_spend_lifetime: str = Field(description="Purchases - refunds, decimal string")
    purchases_lifetime: int
    last_purchase_at: datetime | None
    first_purchase_at: datetime | None
    open_complaints: int
    satisfaction_latest: int | None
    churn_probability: float | None = Field(description="Of the churn model in force")
    clv: float | None


class CustomerRowOut(BaseModel):
    customer_id: str
    profile: dict[str, Any] = Field(description="Latest value of each profile field")
    criteria: CriteriaOut
    dimensions: dict[str, str] = Field(description="Label per dimension")


class CustomerPageOut(BaseModel):
    items: list[CustomerRowOut]
    next: str | None = Field(description="`after` of the next page, or null")
    total: int = Field(description="Customers matching the filter")


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dimension: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=500)
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the rules take over again; null: until cleared"
    )


class OverrideOut(BaseModel):
    override_id: str
    event_id: str
    customer_id: str
    dimension: str
    label: str
    expires_at: datetime | None


class ClearedOut(BaseModel):
    event_id: str


class SnapshotOut(BaseModel):
    at: datetime
    dimensions: dict[str, dict[str, int]]


class DistributionHistoryOut(BaseModel):
    snapshots: list[SnapshotOut]


def _invalid(problems: list[FieldProblem]) -> JSONResponse:
    return problem(
        422,
        "invalid-parameter",
        "Invalid parameter",
        "; ".join(f"{p.field}: {p.reason}" for p in problems),
        errors=[{"field": p.field, "reason": p.reason, "code": "invalid"} for p in problems],
    )


def _row(row: CustomerRow, defaults: dict[str, str]) -> CustomerRowOut:
    return CustomerRowOut(
        customer_id=row.state.customer_id,
        profile={k: v.value for k, v in row.state.profile.items()},
        criteria=CriteriaOut.model_validate(customer_search.criteria(row)),
        dimensions=customer_search.labels_of(row.state, defaults),
    )


def _instant(text: str | None, field: str, problems: list[FieldProblem]) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        problems.append(FieldProblem(field, f"{text!r} is not an ISO date or time"))
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def build_customers_router(
    engine: AsyncEngine,
    current: Callable[[], RuleSet],
    *,
    churn: ChurnModelHolder,
    clock: Clock,
    publisher: Publisher,
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["customers"])

    def filter_from(query: FilterQuery, rules: RuleSet) -> CustomerFilter | list[FieldProblem]:
        dimensions = {d.name: allowed_labels(rules, d.name) for d in rules.dimensions}
        return parse_filter(query.params(), dimensions)

    async def scoring(rules: RuleSet) -> Scoring:
        async with engine.connect() as conn:
            now = await clock.now(conn)
        return Scoring(churn.model, rule_set_churn_config(rules), now)

    @router.get(
        "/customers",
        dependencies=READ,
        response_model=CustomerPageOut,
        summary="Search customers by id prefix, labels and criteria; cursor-paged by id",
        responses={422: _PROBLEM},
    )
    async def search_customers(
        query: Annotated[SearchQuery, Query()],
    ) -> CustomerPageOut | JSONResponse:
        rules = current()
        found = filter_from(query, rules)
        page = parse_page(query.params())
        if isinstance(found, list) or isinstance(page, list):
            problems = [
                *(found if isinstance(found, list) else ()),
                *(page if isinstance(page, list) else ()),
            ]
            return _invalid(problems)
        defaults = {d.name: d.default for d in rules.dimensions}
        score = await scoring(rules)
        async with engine.connect() as conn:
            rows, more = await customer_search.search(
                conn, found, defaults, score, after=page.after, limit=page.limit
            )
            total = await customer_search.count(conn, found, defaults)
        return CustomerPageOut(
            items=[_row(r, defaults) for r in rows],
            next=rows[-1].state.customer_id if more and rows else None,
            total=total,
        )

    @router.get(
        "/customers:export",
        dependencies=READ,
        summary="Every customer the search filters select, as CSV or XLSX (streamed)",
        response_class=StreamingResponse,
        response_model=None,
        responses={
            200: {
                "content": {customer_export.CSV_MEDIA_TYPE: {}, customer_export.XLSX_MEDIA_TYPE: {}}
            },
            422: _PROBLEM,
        },
    )
    async def export_customers(
        query: Annotated[ExportQuery, Query()],
    ) -> StreamingResponse | JSONResponse:
        rules = current()
        found = filter_from(query, rules)
        problems = list(found) if isinstance(found, list) else []
        if query.format not in customer_export.MEDIA_TYPES:
            problems.append(FieldProblem("format", f"{query.format!r} is not csv or xlsx"))
        if problems or isinstance(found, list):
            return _invalid(problems)
        defaults = {d.name: d.default for d in rules.dimensions}
        score = await scoring(rules)
        async with engine.connect() as conn:
            total = await customer_search.count(conn, found, defaults)
        kind: Literal["csv", "xlsx"] = "csv" if query.format == "csv" else "xlsx"
        chosen = found

        async def pages() -> AsyncIterator[list[CustomerRow]]:
            async with engine.connect() as conn:
                async for rows in customer_search.walk(conn, chosen, defaults, score):
                    yield rows

        body = (
            customer_export.csv_stream(pages(), defaults)
            if kind == "csv"
            else customer_export.xlsx_stream(pages(), defaults)
        )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(
            body,
            media_type=customer_export.MEDIA_TYPES[kind],
            headers={
                "X-Total-Count": str(total),
                "Content-Disposition": f'attachment; filename="customers-{stamp}.{kind}"',
            },
        )

    async def known(customer_id: str) -> bool:
        async with engine.connect() as conn:
            return await customer_search.customer_exists(conn, customer_id)

    async def publish(
        customer_id: str,
        dimension: str,
        label: str | None,
        reason: str,
        expires_at: datetime | None,
        by: str,
    ) -> Requested | JSONResponse:
        if not await known(customer_id):
            return problem(
                404, "unknown-customer", "Unknown customer", f"no customer {customer_id!r}"
            )
        try:
            return await request_override(
                publisher,
                current(),
                customer_id=customer_id,
                dimension=dimension,
                label=label,
                reason=reason,
                expires_at=expires_at,
                by=by,
                now=datetime.now(UTC),
            )
        except OverrideRejected as exc:
            return _invalid([FieldProblem(exc.field, exc.reason)])
        except BrokerUnavailable as exc:
            return problem(
                503,
                "broker-unavailable",
                "Broker unavailable",
                f"the override was not published: {exc}",
                headers={"Retry-After": "5"},
            )

    @router.post(
        "/customers/{customer_id}/overrides",
        status_code=202,
        response_model=OverrideOut,
        summary="Pin a dimension to a label (until expires_at): published as an event, applied "
        "by the classifier in order with the customer's events",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": OverrideIn.model_json_schema()}},
            }
        },
        responses={404: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
    )
    async def set_override(
        customer_id: str,
        request: Request,
        principal: Annotated[Principal, requires(Role.OPERATE)],
    ) -> OverrideOut | JSONResponse:
        try:
            body = OverrideIn.model_validate_json(await request.body())
        except ValidationError as exc:
            return _invalid(
                [
                    FieldProblem(".".join(str(p) for p in e["loc"]) or "(body)", e["msg"])
                    for e in exc.errors(include_url=False)
                ]
            )
        done = await publish(
            customer_id, body.dimension, body.label, body.reason, body.expires_at, principal.name
        )
        if isinstance(done, JSONResponse):
            return done
        return JSONResponse(
            OverrideOut(
                override_id=done.override_id,
                event_id=done.event_id,
                customer_id=customer_id,
                dimension=body.dimension,
                label=body.label,
                expires_at=done.expires_at,
            ).model_dump(mode="json"),
            status_code=202,
        )

    @router.delete(
        "/customers/{customer_id}/overrides/{dimension}",
        status_code=202,
        response_model=ClearedOut,
        summary="Clear the override of a dimension: the rules decide it again at once",
        responses={404: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
    )
    async def clear_override(
        customer_id: str,
        dimension: str,
        principal: Annotated[Principal, requires(Role.OPERATE)],
    ) -> ClearedOut | JSONResponse:
        done = await publish(customer_id, dimension, None, "cleared", None, principal.name)
        if isinstance(done, JSONResponse):
            return done
        return JSONResponse({"event_id": done.event_id}, status_code=202)

    @router.get(
        "/stats/distribution/history",
        dependencies=READ,
        response_model=DistributionHistoryOut,
        tags=["segments"],
        summary="Snapshots of the label distribution, oldest first (default: the last 24 h)",
        responses={422: _PROBLEM},
    )
    async def distribution_history(
        since: Annotated[str | None, Query(description="ISO time (default: until - 24 h)")] = None,
        until: Annotated[str | None, Query(description="ISO time (default: now)")] = None,
    ) -> DistributionHistoryOut | JSONResponse:
        problems: list[FieldProblem] = []
        end = _instant(until, "until", problems) or datetime.now(UTC)
        start = _instant(since, "since", problems) or end - timedelta(hours=24)
        if problems:
            return _invalid(problems)
        async with engine.connect() as conn:
            found = await distribution_store.between(conn, start, end, SNAPSHOT_LIMIT)
        return DistributionHistoryOut(
            snapshots=[SnapshotOut(at=at, dimensions=dims) for at, dims in found]
        )

    return router
