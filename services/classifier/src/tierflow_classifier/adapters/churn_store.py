"""Churn models in PostgreSQL: the fit job (in a process of its own, off the event loop:
adapters/churn_fit_process.py), versioned storage, and the in-process copy the classifier
scores with.

A model's version is content-addressed (domain/churn/fit.py), one row per version; exactly one
is current, switched under a transaction-scoped advisory lock so racing publishers (the
elected process, the CLI, any process's API) are serialized. Every process reads the current
version every CLASSIFIER_CHURN_RELOAD_S and loads the model only when it changed; only the
elected process (adapters/leadership.py) fits on the schedule."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters.churn_fit_process import FitRequest, fit_in_process
from tierflow_classifier.adapters.clock import Clock, FitSchedule, Stillness
from tierflow_classifier.adapters.leadership import Leadership
from tierflow_classifier.domain.churn import ChurnConfig, FittedModel
from tierflow_classifier.domain.features import DAY_S
from tierflow_common.db.tables import churn_models

log = structlog.get_logger(__name__)
_PUBLISH_LOCK = zlib.crc32(b"tierflow-classifier:churn-publish")


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


def _iso_day(day: float) -> str:
    return datetime.fromtimestamp(day * DAY_S, UTC).isoformat()


def describe(model: FittedModel, repeat_purchases: float | None = None) -> dict[str, Any]:
    """The summary stored (and served by GET /v1/models/churn) next to a model: the purchase
    and spend models, the weights it scores with, and its own holdout metrics."""
    report = model.report
    split: dict[str, Any] | None = None
    if report is not None:
        split = {
            "horizon_days": report.horizon_days,
            "calibration_window_end": _iso_day(report.cutoff_day),
            "labels_until": _iso_day(report.as_of_day),
            "folds": report.folds,
            "calibrated": report.calibrated,
            "fallback": report.fallback,
        }
    return {
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
        "weights": asdict(model.weights) if model.weights is not None else None,
        "time_split": split,
        # Which weights the store's history supported, which are priors, and why.
        "terms": [asdict(t) for t in report.terms] if report is not None else [],
        # Out of fold on the split: AUC (and its two baselines), log loss, Brier score, and
        # per churn level the mean P(churn) against the observed rate.
        "holdout": asdict(report.holdout) if report is not None and report.holdout else None,
        "validation": {
            "repeat_purchases_observed": repeat_purchases,
            "document": "docs/model-validation.md (CDNOW: published parameters, holdout AUC)",
        },
    }


async def fit_and_store(
    engine: AsyncEngine,
    at: datetime,
    *,
    config: ChurnConfig | None = None,
    min_customers: int = 50,
) -> FittedModel | None:
    """Fit on the history up to `at` (in a process of its own) and publish the model.
    `config` gives the horizon and levels the fit calibrates for (the rule set's)."""
    request = FitRequest(
        database_url=engine.url.render_as_string(hide_password=False),
        at=at,
        config=config or ChurnConfig(),
    )
    outcome = await fit_in_process(request)
    model = outcome.model
    if model is None or outcome.customers < min_customers:
        log.info("churn_fit_skipped", customers=outcome.customers, reason="not enough history")
        return None
    await publish_model(engine, model, at, describe(model))
    log.info(
        "churn_model_fitted",
        version=model.version,
        customers=model.n_customers,
        seconds=round(model.fit_seconds, 2),
        variant=model.variant,
        calibrated=model.calibration is not None,
    )
    return model


async def publish_model(
    engine: AsyncEngine, model: FittedModel, at: datetime, summary: dict[str, Any]
) -> None:
    """Store `model` (fitted on the history up to `at`) as the current one. Its version is
    content-addressed (the same data and settings give the same id), and publications are
    serialized, so two racing publishers neither collide nor leave two models current."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PUBLISH_LOCK})
        await conn.execute(
            update(churn_models).where(churn_models.c.is_current).values(is_current=False)
        )
        now = datetime.now(UTC)
        stmt = insert(churn_models).values(
            version=model.version,
            fitted_at=now,
            data_as_of=at,
            payload=model.to_dict(),
            summary=summary,
            is_current=True,
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["version"],
                set_={"is_current": True, "data_as_of": at, "fitted_at": now},
            )
        )


@dataclass(frozen=True)
class Published:
    """The current model's version and when it was fitted (wall time)."""

    version: str
    fitted_at: datetime


async def published(engine: AsyncEngine) -> Published | None:
    """The current model's version, without its payload (one indexed read: cheap to poll)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(churn_models.c.version, churn_models.c.fitted_at).where(
                    churn_models.c.is_current
                )
            )
        ).first()
    return Published(row.version, row.fitted_at) if row else None


async def follow(engine: AsyncEngine, holder: ChurnModelHolder) -> Published | None:
    """Load the current model into `holder` if it is not the one held; return what is
    current."""
    current = await published(engine)
    held = holder.model.version if holder.model is not None else None
    if (current.version if current else None) != held:
        holder.model = await load_current(engine)
        log.info("churn_model_loaded", version=holder.model.version if holder.model else None)
    return current


async def model_loop(
    engine: AsyncEngine,
    clock: Clock,
    holder: ChurnModelHolder,
    *,
    schedule: FitSchedule,
    stopping: asyncio.Event,
    leadership: Leadership | None = None,
    config: Callable[[], ChurnConfig] = ChurnConfig,
) -> None:
    """Every process: load the current model as soon as another one (the elected process,
    the CLI, the API of any process) publishes a new one — a cheap version read each
    `schedule.reload_s` at most. The elected process (`leadership`; None: this one) also
    refits when the clock says so (`Clock.fit_due`); a fit needs the store's own history, so
    the first comes once there is some. On the replay clock a drained replay ends with the
    model of its whole history: a fit is not repeated at an instant the current model is
    already as of.

    The wall schedule is kept in the store, not in the process, so a new leader neither
    refits a fresh model nor waits a whole interval for a stale one: a fit is due once the
    current model is `every_s` old, or — no model yet — once this process has led for
    min(every_s, 60 s) (and then every `every_s` while a fit finds too little history)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    stillness = Stillness(since=began)
    tried_at: datetime | None = None  # the instant of the last fit (or skipped fit)
    tried_wall: float | None = None  # loop time of that attempt
    led = False
    first_s = min(schedule.every_s, 60.0)
    while not stopping.is_set():
        try:
            current = await follow(engine, holder)
            leading = leadership is None or await leadership.lead()
            if leading and not led:
                stillness = Stillness(since=loop.time())
                tried_at = tried_wall = None
            led = leading
            if leading:
                async with engine.connect() as conn:
                    at = await clock.now(conn)
                wall = loop.time()
                held_s = leadership.held_for_s if leadership is not None else wall - began
                if current is None:
                    wall_due = held_s >= first_s and (
                        tried_wall is None or wall - tried_wall >= schedule.every_s
                    )
                else:
                    age_s = (datetime.now(UTC) - current.fitted_at).total_seconds()
                    wall_due = age_s >= schedule.every_s and (
                        tried_wall is None or wall - tried_wall >= first_s
                    )
                due = clock.fit_due(
                    schedule,
                    now=at,
                    steady_s=stillness.observe(at, wall),
                    tried_at=tried_at,
                    wall_due=wall_due,
                )
                if due and at is not None:
                    summary = await current_summary(engine)
                    if summary is not None and summary["data_as_of"] == at:
                        due, tried_at = False, at
                if due and at is not None:
                    tried_at, tried_wall = at, wall  # fitted, or too little history here
                    fitted = await fit_and_store(engine, at, config=config())
                    if fitted is not None:
                        holder.model = fitted
        except Exception as exc:
            log.warning("churn_model_refresh_failed", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), clock.model_poll_s(schedule))
