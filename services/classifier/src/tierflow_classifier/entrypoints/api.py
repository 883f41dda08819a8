"""Classifier read API."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters import queries
from tierflow_classifier.adapters.churn_store import (
    ChurnModelHolder,
    current_summary,
    fit_and_store,
)
from tierflow_classifier.adapters.clock import Clock, WallClock
from tierflow_classifier.adapters.repository import get_state
from tierflow_classifier.domain.churn_features import full_score
from tierflow_classifier.domain.classify import rule_set_churn_config
from tierflow_classifier.domain.memo import once_per_object
from tierflow_classifier.domain.model import Assignment, CustomerState
from tierflow_classifier.domain.rules import RuleSet
from tierflow_common.auth import Role, requires
from tierflow_common.errors_http import problem

READ = [requires(Role.READ)]


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: report those as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class DimensionOut(BaseModel):
    label: str
    since: datetime
    reason: str
    rule: str
    explanation: dict[str, Any]
    rule_set_version: str


class FeaturesOut(BaseModel):
    purchases_lifetime: int
    net_spend_lifetime: str = Field(
        description="Purchases - refunds, decimal string, base currency"
    )
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    refunds_lifetime: int
    refunded_lifetime: str = Field(description="Decimal string in the base currency")
    discounted_purchases: int
    interactions: dict[str, int] = Field(description="Interaction count by kind")
    last_interaction_at: datetime | None
    open_complaints: int
    referrals: int
    satisfaction_latest: int | None
    satisfaction_average: str | None = Field(description="Mean CSAT (1-5), decimal string")


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f") if value != 0 else "0"


class CustomerOut(BaseModel):
    customer_id: str
    dimensions: dict[str, DimensionOut]
    features: FeaturesOut
    next_review_at: datetime | None = Field(
        default=None, description="When time alone may next change a class"
    )
    scores: ScoresOut | None = Field(default=None, description="Churn risk and value, if modelled")
    profile: dict[str, Any] = Field(description="Latest value of each profile field")


def _explanation(name: str, a: Assignment, rules: RuleSet | None) -> dict[str, Any]:
    """A default label's explanation is not stored with the state (it is the same for every
    customer): the rules that were evaluated, none matching, from the rule set."""
    if a.explanation or rules is None or not a.rule.endswith(".default"):
        return dict(a.explanation)
    dim = next((d for d in rules.dimensions if d.name == name), None)
    if dim is None or not a.rule_set_version.startswith(rules.version):
        return {}
    return {"evaluated": [r.when for r in dim.rules]}


def customer_out(state: CustomerState, rules: RuleSet | None = None) -> CustomerOut:
    return CustomerOut(
        customer_id=state.customer_id,
        dimensions={
            name: DimensionOut(
                label=a.label,
                since=a.since,
                reason=a.reason,
                rule=a.rule,
                explanation=_explanation(name, a, rules),
                rule_set_version=a.rule_set_version,
            )
            for name, a in state.dimensions.items()
        },
        features=_features(state),
        profile={k: v.value for k, v in state.profile.items()},
        next_review_at=state.next_review_at,
    )


def _features(state: CustomerState) -> FeaturesOut:
    f = state.features
    count = f.satisfaction_count
    average = _decimal(Decimal(f.satisfaction_sum) / count) if count else None
    return FeaturesOut(
        purchases_lifetime=state.purchases_lifetime,
        net_spend_lifetime=_decimal(state.net_spend_lifetime),
        first_purchase_at=state.first_purchase_at,
        last_purchase_at=state.last_purchase_at,
        refunds_lifetime=state.refunds_lifetime,
        refunded_lifetime=_decimal(state.refunded_lifetime),
        discounted_purchases=f.discounted_purchases,
        interactions=dict(f.interactions),
        last_interaction_at=f.last_interaction_at,
        open_complaints=f.open_complaints,
        referrals=f.referrals,
        satisfaction_latest=f.satisfaction_latest,
        satisfaction_average=average,
    )


class ChangeOut(BaseModel):
    change_id: str
    dimension: str
    from_label: str | None = Field(alias="from")
    to_label: str = Field(alias="to")
    reason: str
    explanation: dict[str, Any]
    cause: str
    effective_at: datetime
    rule_set_version: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class HistoryOut(BaseModel):
    customer_id: str
    changes: list[ChangeOut]
    next: str | None = Field(description="Cursor for the next page, or null")


class AsOfOut(BaseModel):
    customer_id: str
    as_of: datetime
    dimensions: dict[str, ChangeOut] = Field(
        description="Per dimension, the change that set the label in force at `as_of`"
    )


class SegmentOut(BaseModel):
    dimension: str
    label: str
    members: list[dict[str, Any]]
    next: str | None


class ScoresOut(BaseModel):
    """Churn risk and customer value from the current churn model (null before the first fit)."""

    model_version: str
    churn_probability: float = Field(description="P(no purchase in the horizon)")
    churn_level: str
    p_alive: float
    expected_purchases: float = Field(description="In the churn horizon")
    p_no_purchase_model: float = Field(description="The purchase model's part, before signals")
    expected_spend_per_purchase: float
    clv: float = Field(description="Expected value over the CLV horizon, base currency")
    value_at_risk: float = Field(description="clv x churn_probability")
    explanation: dict[str, Any] = Field(description="Every input and each term's contribution")


@once_per_object
def _defaults(rules: RuleSet) -> dict[str, str]:
    """Each dimension's default label (what a customer without a stored label holds)."""
    return {d.name: d.default for d in rules.dimensions}


def build_router(
    engine: AsyncEngine,
    current: Callable[[], RuleSet],
    *,
    churn: ChurnModelHolder | None = None,
    clock: Clock | None = None,
) -> APIRouter:
    """`current`: the rule set in force now (an activation replaces it without a restart)."""
    router = APIRouter(prefix="/v1", tags=["customers"])
    churn = churn or ChurnModelHolder()
    clock = clock or WallClock()

    @router.get(
        "/customers/{customer_id}",
        dependencies=READ,
        response_model=CustomerOut | AsOfOut,
        summary="A customer's classes, with explanations and features (or as of a past time)",
        responses={404: {"description": "Unknown customer"}},
    )
    async def get_customer(
        customer_id: str,
        as_of: Annotated[
            datetime | None,
            Query(description="Answer what the classes were at this time, and why"),
        ] = None,
    ) -> CustomerOut | AsOfOut | JSONResponse:
        async with engine.connect() as conn:
            if as_of is not None:
                found = await queries.labels_as_of(conn, customer_id, as_of, _defaults(current()))
                if not found:
                    return problem(
                        404,
                        "unknown-customer",
                        "Unknown customer",
                        f"no classification of {customer_id!r} at or before {as_of.isoformat()}",
                    )
                return AsOfOut(
                    customer_id=customer_id,
                    as_of=as_of,
                    dimensions={k: ChangeOut.model_validate(v) for k, v in found.items()},
                )
            state = await get_state(conn, customer_id)
            now = await clock.now(conn)
        if state is None:
            return problem(
                404,
                "unknown-customer",
                "Unknown customer",
                f"no customer {customer_id!r} has been classified",
            )
        rules = current()
        out = customer_out(state, rules)
        model = churn.model
        score = (
            full_score(state, now, model, rule_set_churn_config(rules))
            if model is not None and now
            else None
        )
        if score is not None and model is not None:
            out.scores = ScoresOut(
                model_version=model.version,
                churn_probability=score.probability,
                churn_level=score.level,
                p_alive=score.p_alive,
                expected_purchases=score.expected_purchases,
                p_no_purchase_model=score.p_no_purchase_model,
                expected_spend_per_purchase=score.expected_spend,
                clv=score.clv,
                value_at_risk=score.value_at_risk,
                explanation=_finite(dict(score.explanation)),
            )
        return out

    @router.get(
        "/customers/{customer_id}/history",
        dependencies=READ,
        response_model=HistoryOut,
        summary="Every class change of a customer, oldest first, cursor-paged",
    )
    async def get_history(
        customer_id: str,
        dimension: str | None = None,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> HistoryOut | JSONResponse:
        after = None
        if cursor is not None:
            try:
                at, _, cid = cursor.partition("|")
                after = (datetime.fromisoformat(at), cid)
            except ValueError:
                return problem(400, "bad-cursor", "Invalid cursor", "use `next` from a page")
        async with engine.connect() as conn:
            rows = await queries.history(
                conn,
                customer_id,
                dimension=dimension,
                since=from_,
                until=to,
                limit=limit,
                after=after,
            )
        nxt = (
            f"{rows[-1]['effective_at'].isoformat()}|{rows[-1]['change_id']}"
            if len(rows) == limit
            else None
        )
        return HistoryOut(
            customer_id=customer_id,
            changes=[ChangeOut.model_validate(r) for r in rows],
            next=nxt,
        )

    @router.get(
        "/segments/{dimension}/{label}",
        dependencies=READ,
        response_model=SegmentOut,
        tags=["segments"],
        summary="Customers currently holding a label, cursor-paged by customer id",
    )
    async def get_segment(
        dimension: str,
        label: str,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        cursor: str | None = None,
    ) -> SegmentOut | JSONResponse:
        defaults = _defaults(current())
        if dimension not in defaults:
            return problem(
                404,
                "unknown-dimension",
                "Unknown dimension",
                f"{dimension!r} is not one of {', '.join(sorted(defaults))}",
            )
        async with engine.connect() as conn:
            members = await queries.segment(
                conn, dimension, label, limit=limit, after=cursor, default=defaults[dimension]
            )
        return SegmentOut(
            dimension=dimension,
            label=label,
            members=members,
            next=members[-1]["customer_id"] if len(members) == limit else None,
        )

    @router.get(
        "/stats/distribution",
        dependencies=READ,
        tags=["segments"],
        summary="How many customers hold each label, per dimension",
    )
    async def get_distribution() -> dict[str, dict[str, int]]:
        async with engine.connect() as conn:
            return await queries.distribution(conn, _defaults(current()))

    @router.get(
        "/models/churn",
        dependencies=READ,
        response_model=None,
        tags=["models"],
        summary=(
            "The churn model in force: parameters, weights, fit time, data size, and its own"
            " holdout metrics (AUC, log loss, Brier score, calibration table)"
        ),
        responses={404: {"description": "No model fitted yet"}},
    )
    async def get_churn_model() -> dict[str, Any] | JSONResponse:
        summary = await current_summary(engine)
        if summary is None:
            return problem(
                404,
                "no-churn-model",
                "No churn model yet",
                "no model has been fitted; POST /v1/models/churn:fit once there is history",
            )
        result: dict[str, Any] = _finite(summary)
        return result

    @router.post(
        "/models/churn:fit",
        dependencies=[requires(Role.ADMIN)],
        response_model=None,
        tags=["models"],
        summary="Fit the churn model on the store's history now (also runs on a schedule)",
        responses={409: {"description": "Not enough purchase history to fit"}},
    )
    async def fit_churn_model() -> dict[str, Any] | JSONResponse:
        async with engine.connect() as conn:
            at = await clock.now(conn)
        # Calibrated for the horizon and levels of the rule set in force.
        config = rule_set_churn_config(current())
        fitted = await fit_and_store(engine, at, config=config) if at is not None else None
        if fitted is None:
            return problem(
                409,
                "not-enough-history",
                "Not enough history",
                "fitting needs customers with repeat purchases",
            )
        churn.model = fitted
        summary = await current_summary(engine)
        fitted_summary: dict[str, Any] = _finite(summary or {})
        return fitted_summary

    return router
