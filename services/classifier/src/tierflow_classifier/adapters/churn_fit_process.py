"""Runs a churn fit in a process of its own: reading a million customers' histories and three
maximum-likelihood fits are seconds of CPU that, on the classifier's event loop (or a thread
of it, holding the GIL in the Python parts), stalled consumption ~20 s on the first fit of a
big store (docs/benchmarks.md). The process forks from the simulations' fork server
(adapters/simulation_process.py), reads the database itself and sends back the fitted model;
the caller publishes it."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tierflow_classifier.adapters.child_process import ChildFailed, run_child
from tierflow_classifier.adapters.churn_history import collect_history
from tierflow_classifier.domain.churn import FittedModel
from tierflow_classifier.domain.churn.score import ChurnConfig
from tierflow_classifier.domain.churn.store_fit import fit_store
from tierflow_classifier.domain.purchase_days import instant_day
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings


@dataclass(frozen=True)
class FitRequest:
    database_url: str
    at: datetime
    config: ChurnConfig


@dataclass(frozen=True)
class FitOutcome:
    model: FittedModel | None
    customers: int  # customers with a purchase before the fit's instant


class ChurnFitFailed(RuntimeError):
    """The fitting process failed (its error) or died."""


async def _fit(request: FitRequest) -> FitOutcome:
    engine = create_engine(DatabaseSettings(database_url=request.database_url))
    try:
        history = await collect_history(engine, request.at)
    finally:
        await engine.dispose()
    undated = history.undated.x.size if history.undated is not None else 0
    model = fit_store(history, instant_day(request.at), config=request.config)
    return FitOutcome(model, history.customers + undated)


def _entry(request: FitRequest, messages: Any) -> None:
    os.nice(10)  # below the consumer and the API: the fit takes what CPU they leave
    try:
        outcome = asyncio.run(_fit(request))
    except BaseException as exc:  # the parent must hear of it rather than wait forever
        messages.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    messages.put(("result", outcome))


async def fit_in_process(request: FitRequest) -> FitOutcome:
    """Fit in a fresh process and wait for it without blocking the event loop; cancelled,
    the process is terminated."""
    try:
        outcome: FitOutcome = await run_child(_entry, request, name="tierflow-churn-fit")
    except ChildFailed as exc:
        raise ChurnFitFailed(str(exc)) from exc
    return outcome
