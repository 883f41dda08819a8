"""Runs a what-if simulation in a process of its own, so judging a million customers uses the
other core and its own memory instead of the consumer's event loop (which goes on serving
events and requests meanwhile). The process gets what the classifier judges by (rule-set texts
to compile, population statistics, churn model) and reads the database itself, through one
read-only snapshot (adapters/snapshot.py)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tierflow_classifier.adapters import repository as repo
from tierflow_classifier.adapters.care_preview import CarePreview
from tierflow_classifier.adapters.child_process import ChildFailed, run_child
from tierflow_classifier.adapters.churn_store import ChurnModelHolder
from tierflow_classifier.adapters.population_store import PopulationHolder
from tierflow_classifier.adapters.rules_file import parse_rules
from tierflow_classifier.adapters.snapshot import SnapshotUnitOfWork
from tierflow_classifier.domain.churn import FittedModel
from tierflow_classifier.domain.population import PopulationStats
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.simulation import merge_reports, simulate
from tierflow_common.db.engine import create_engine
from tierflow_common.settings import DatabaseSettings, TopicSettings

GC_EVERY = 50  # pages between two garbage collections in a simulation process


@dataclass(frozen=True)
class SimulationRequest:
    """Everything the simulation process needs (picklable: texts, not compiled programs)."""

    database_url: str
    topics: TopicSettings
    candidate_body: str
    # What the candidate's activation would put in force: the candidate for `percent` % of
    # customers, `previous` (a version in `bodies`) for the rest.
    previous: str | None
    percent: float
    activation: int
    base_version: str | None
    bodies: Mapping[str, str]  # every version customers may be on, to tell what it redefines
    population: PopulationStats | None
    churn: FittedModel | None
    as_of: datetime
    playbooks_file: Path | None
    page: int = 1_000
    # A share of the customers (ids after `after`, up to and including `until`) read in the
    # snapshot another transaction exported: how several processes see one instant.
    snapshot: str | None = None
    after: str = ""
    until: str | None = None


def _entry(request: SimulationRequest, messages: Any) -> None:
    """The simulation process: ("progress", customers) now and then, then ("result", report)
    or ("error", message)."""
    # Below the consumer and the API: a simulation takes what CPU they leave.
    os.nice(10)
    # Judging allocates millions of short-lived acyclic objects: the collector's automatic
    # passes cost a fifth of the time and find nothing. It runs every GC_EVERY pages instead
    # (what cycles there are, from the driver and the event loop, stay bounded).
    gc.freeze()
    gc.disable()
    pages = 0

    def page_done(done: int) -> None:
        nonlocal pages
        pages += 1
        if pages % GC_EVERY == 0:
            gc.collect()
        messages.put(("progress", done))

    try:
        report = asyncio.run(_run(request, page_done))
    except BaseException as exc:  # the parent must hear of it rather than wait forever
        messages.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    messages.put(("result", report))


async def _run(request: SimulationRequest, progress: Callable[[int], None]) -> dict[str, Any]:
    known = {v: parse_rules(body, f"rule set {v}") for v, body in request.bodies.items()}
    candidate = parse_rules(request.candidate_body, "candidate")
    classifier = Classifier(candidate, PopulationHolder(), ChurnModelHolder(), known=known)
    classifier.population.stats = request.population
    classifier.churn.model = request.churn
    previous = known.get(request.previous) if request.previous is not None else None
    classifier.put_in_force(candidate, previous, request.percent, request.activation)
    engine = create_engine(DatabaseSettings(database_url=request.database_url))
    try:
        care = CarePreview.from_file(request.playbooks_file)
        async with SnapshotUnitOfWork(engine, snapshot=request.snapshot) as uow:
            report = await simulate(
                uow,
                classifier.basis(),
                base_version=request.base_version,
                candidate_version=candidate.version,
                as_of=request.as_of,
                topics=request.topics,
                dimensions=[d.name for d in candidate.dimensions],
                care=care.bound(uow.connection),
                page=request.page,
                progress=progress,
                after=request.after,
                until=request.until,
            )
        return report.as_json()
    finally:
        await engine.dispose()


class SimulationFailed(RuntimeError):
    """The simulation process failed (its error) or died."""


async def run_in_process(
    request: SimulationRequest, on_progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Run the simulation in a fresh process (forked from the fork server: nothing of this
    process's state, its sockets or event loop, is inherited) and wait for its report without
    blocking the loop. Cancelled (the client went away), the process is terminated."""
    try:
        report = await run_child(
            _entry, request, name="tierflow-simulation", on_progress=on_progress
        )
    except ChildFailed as exc:
        raise SimulationFailed(str(exc)) from exc
    return dict(report)


async def run_parallel(
    request: SimulationRequest,
    workers: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The simulation split by customer id over `workers` processes that all read the
    snapshot this call's transaction exports (one consistent instant), their reports merged.
    `on_progress(customers judged, customers in the snapshot)` as pages are done."""
    started = time.monotonic()
    engine = create_engine(DatabaseSettings(database_url=request.database_url))
    try:
        async with engine.connect() as opened:
            conn = await opened.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
                count = await repo.count_customers(conn)
                bounds = [""]
                for k in range(1, max(1, min(workers, count // 1_000))):
                    bounds.append(await repo.customer_at(conn, k * count // workers))
                shares = [
                    replace(request, snapshot=snapshot, after=lo, until=hi)
                    for lo, hi in zip(bounds, [*bounds[1:], None], strict=True)
                ]
                done = [0] * len(shares)

                def seen(k: int) -> Callable[[int], None]:
                    def note(n: int) -> None:
                        done[k] = n
                        if on_progress is not None:
                            on_progress(sum(done), count)

                    return note

                # The exporting transaction stays open until every share is read.
                reports = await asyncio.gather(
                    *(run_in_process(share, seen(k)) for k, share in enumerate(shares))
                )
    finally:
        await engine.dispose()
    merged = merge_reports(reports)
    merged["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    return merged
