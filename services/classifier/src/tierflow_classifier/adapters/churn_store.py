"""Churn models in PostgreSQL: the fit job (one streaming pass over customers, then maximum
likelihood with scipy), versioned storage, and the in-process copy the classifier scores with."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any

import numpy as np
import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters.clock import Clock, FitSchedule, Stillness
from tierflow_classifier.domain.churn import FittedModel, fit_model
from tierflow_classifier.domain.features import DAY_S
from tierflow_common.db.tables import churn_models, customers

log = structlog.get_logger(__name__)
WEEK_DAYS = 7.0


class ChurnModelHolder:
    """The current model, shared by the consumer and the scheduler of this process."""

    def __init__(self) -> None:
        self.model: FittedModel | None = None


async def load_current(engine: AsyncEngine) -> FittedModel | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(churn_models.c.payload).where(churn_models.c.is_current))
        ).first()
    return FittedModel.from_dict(row.payload) if row else None


async def current_summary(engine: AsyncEngine) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    churn_models.c.version,
                    churn_models.c.fitted_at,
                    churn_models.c.data_as_of,
                    churn_models.c.summary,
                ).where(churn_models.c.is_current)
            )
        ).first()
    if row is None:
        return None
    return {
        "version": row.version,
        "fitted_at": row.fitted_at,
        "data_as_of": row.data_as_of,
        **row.summary,
    }


async def collect(engine: AsyncEngine, at: datetime) -> tuple[np.ndarray, ...]:
    """(x, t_x, T, mean_spend) in weeks, one row per customer with a purchase before `at`."""
    xs: list[float] = []
    txs: list[float] = []
    ts: list[float] = []
    spends: list[float] = []
    query = select(
        customers.c.purchases_lifetime,
        customers.c.first_purchase_at,
        customers.c.last_purchase_at,
        customers.c.net_spend_lifetime,
    ).where(customers.c.purchases_lifetime > 0, customers.c.first_purchase_at <= at)
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=20_000))
        async for n, first, last, spend in result:
            age = max((at - first).total_seconds() / DAY_S, 0.0)
            recency = min(max((last - first).total_seconds() / DAY_S, 0.0), age)
            xs.append(float(n - 1))
            txs.append(recency / WEEK_DAYS if n > 1 else 0.0)
            ts.append(age / WEEK_DAYS)
            spends.append(float(spend) / n if n > 1 and spend > 0 else float("nan"))
    return np.array(xs), np.array(txs), np.array(ts), np.array(spends)


async def fit_and_store(
    engine: AsyncEngine, at: datetime, *, min_customers: int = 50
) -> FittedModel | None:
    x, t_x, T, spend = await collect(engine, at)
    if x.size < min_customers or not np.any(x > 0):
        log.info("churn_fit_skipped", customers=int(x.size), reason="not enough history")
        return None
    model = await asyncio.to_thread(fit_model, x, t_x, T, spend, time_unit_days=WEEK_DAYS)
    summary = {
        "variant": model.variant,
        "parameters": {
            "r": model.purchase.r,
            "alpha": model.purchase.alpha,
            "a": model.purchase.a,
            "b": model.purchase.b,
        },
        "spend_parameters": (
            {"p": model.spend.p, "q": model.spend.q, "gamma": model.spend.gamma}
            if model.spend is not None
            else None
        ),
        "time_unit_days": model.time_unit_days,
        "customers": model.n_customers,
        "spend_customers": model.n_spend_customers,
        "log_likelihood": model.log_likelihood,
        "log_likelihood_bgnbd": model.bgnbd.log_likelihood,
        "log_likelihood_mbgnbd": model.mbgnbd.log_likelihood if model.mbgnbd else None,
        "fit_seconds": model.fit_seconds,
        "validation": {
            "repeat_purchases_observed": float(x.sum()),
            "document": "docs/model-validation.md (CDNOW: published parameters, holdout AUC)",
        },
    }
    async with engine.begin() as conn:
        await conn.execute(
            update(churn_models).where(churn_models.c.is_current).values(is_current=False)
        )
        stmt = insert(churn_models).values(
            version=model.version,
            fitted_at=datetime.now(at.tzinfo),
            data_as_of=at,
            payload=model.to_dict(),
            summary=summary,
            is_current=True,
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["version"], set_={"is_current": True, "data_as_of": at}
            )
        )
    log.info(
        "churn_model_fitted",
        version=model.version,
        customers=model.n_customers,
        seconds=round(model.fit_seconds, 2),
        variant=model.variant,
    )
    return model


async def model_loop(
    engine: AsyncEngine,
    clock: Clock,
    holder: ChurnModelHolder,
    *,
    schedule: FitSchedule,
    stopping: asyncio.Event,
) -> None:
    """Reload the current model often (another process may have fitted one) and refit when
    the clock says so (`Clock.fit_due`); a fit needs the store's own history, so the first
    comes once there is some. On the replay clock a drained replay ends with the model of its
    whole history: a fit is not repeated at an instant the current model is already as of."""
    loop = asyncio.get_running_loop()
    next_fit = loop.time() + min(schedule.every_s, 60.0)
    stillness = Stillness(since=loop.time())
    tried_at: datetime | None = None  # the instant of the last fit (or skipped fit)
    while not stopping.is_set():
        try:
            holder.model = await load_current(engine)
            async with engine.connect() as conn:
                at = await clock.now(conn)
            due = clock.fit_due(
                schedule,
                now=at,
                steady_s=stillness.observe(at, loop.time()),
                tried_at=tried_at,
                wall_due=loop.time() >= next_fit,
            )
            if due and at is not None:
                current = await current_summary(engine)
                if current is not None and current["data_as_of"] == at:
                    due, tried_at = False, at
            if due and at is not None:
                fitted = await fit_and_store(engine, at)
                if fitted is not None:
                    holder.model = fitted
                next_fit = loop.time() + schedule.every_s
                tried_at = at  # fitted, or too little history at this instant
        except Exception as exc:
            log.warning("churn_model_refresh_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), clock.model_poll_s(schedule))
