"""The rule-set API: versions and their history, diffs, validation, what-if simulation and
activation (with a canary share and rollback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tierflow_classifier.adapters.rules_file import candidate as compile_candidate
from tierflow_classifier.adapters.simulation_process import (
    SimulationFailed,
    SimulationRequest,
    run_parallel,
)
from tierflow_classifier.domain.rule_versions import (
    Activation,
    Candidate,
    StoredRuleSet,
    diff,
    next_activation,
)
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.exceptions import ActiveRuleSetMoved, UnknownRuleSet
from tierflow_classifier.service_layer import rule_sets
from tierflow_classifier.service_layer.reclassify import Classifier
from tierflow_classifier.service_layer.unit_of_work import UnitOfWork
from tierflow_common.auth import Principal, Role, requires
from tierflow_common.config_file import ConfigProblems
from tierflow_common.errors_http import PROBLEM_CONTENT_TYPE, problem
from tierflow_common.settings import DatabaseSettings, TopicSettings

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
_PROBLEM: dict[str, Any] = {"content": {PROBLEM_CONTENT_TYPE: {}}}
_YAML_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/yaml": {"schema": {"type": "string"}}},
        "description": "A rule set, as config/classifier.yaml is written",
    }
}
HISTORY = 50


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(description="A stored version (simulate a candidate to store it)")
    expected_active: str = Field(
        description="The version you believe is active; 409 if it no longer is"
    )
    rollout_percent: float = Field(default=100, gt=0, le=100)
    note: str = Field(default="", max_length=2_000)


def activation_json(a: Activation) -> dict[str, Any]:
    return {
        "activation": a.activation,
        "version": a.version,
        "previous": a.previous,
        "rollout_percent": a.rollout_percent,
        "activated_at": a.activated_at.isoformat(),
        "activated_by": a.activated_by,
        "note": a.note,
    }


def version_json(s: StoredRuleSet, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": s.version,
        "label": s.label,
        "status": s.status,
        "created_at": s.created_at.isoformat(),
        "created_by": s.created_by,
        "note": s.note,
    }
    if full:
        out["body"] = s.body
        out["content"] = s.content
    return out


def rules_json(rules: RuleSet) -> dict[str, Any]:
    return {
        "version": rules.version,
        "label": rules.label,
        "base_currency": rules.base_currency,
        "window_months": rules.window_months,
        "params": dict(rules.params),
        "timers": [{"name": t.name, "anchor": t.anchor, "days": t.days} for t in rules.timers],
        "dimensions": {
            d.name: {
                "rules": [{"label": r.label, "when": r.when} for r in d.rules],
                "default": d.default,
                "label_from": d.label_from,
                "hysteresis": (
                    {"band": d.hysteresis.band, "min_dwell_days": d.hysteresis.min_dwell_days}
                    if d.hysteresis
                    else None
                ),
            }
            for d in rules.dimensions
        },
    }


def invalid_rule_set(exc: ConfigProblems) -> JSONResponse:
    return problem(
        422,
        "invalid-rule-set",
        "Invalid rule set",
        str(exc),
        errors=[
            {
                "field": p.location,
                "reason": p.message,
                "code": "invalid",
                "line": p.line,
                "column": p.column,
            }
            for p in exc.problems
        ],
    )


async def _yaml(request: Request) -> str | JSONResponse:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in YAML_TYPES:
        return problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"send the rule set as application/yaml (got {kind or 'no content type'!r})",
        )
    body = await request.body()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return problem(400, "bad-encoding", "Bad encoding", "the rule set must be UTF-8 text")


async def _submitted(request: Request) -> Candidate | JSONResponse:
    """The rule set in the request body, compiled; or the 415 / 400 / 422 problem."""
    text = await _yaml(request)
    if isinstance(text, JSONResponse):
        return text
    try:
        return compile_candidate(text, "candidate")
    except ConfigProblems as exc:
        return invalid_rule_set(exc)


async def _progress_lines(job: SimulationRequest, workers: int) -> AsyncIterator[bytes]:
    """NDJSON: {"progress": {"customers", "total"}} about twice a second, then {"result": the
    report} (or {"error": a problem document})."""
    done = total = 0

    def seen(n: int, of: int) -> None:
        nonlocal done, total
        done, total = n, of

    task = asyncio.ensure_future(run_parallel(job, workers, seen))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            line = {"progress": {"customers": done, "total": max(total, done)}}
            yield orjson.dumps(line) + b"\n"
        try:
            yield orjson.dumps({"result": task.result()}) + b"\n"
        except SimulationFailed as exc:
            error = {"title": "Simulation failed", "status": 500, "detail": str(exc)}
            yield orjson.dumps({"error": error}) + b"\n"
    finally:
        task.cancel()


def build_rules_router(
    *,
    unit_of_work: Callable[[], UnitOfWork],
    classifier: Classifier,
    database: DatabaseSettings,
    topics: TopicSettings,
    playbooks_file: Any = None,
    workers: int = 1,
) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["rules"])

    @router.get("/rules", summary="The rule set in force, the activation, versions and history")
    async def get_rules(_: Annotated[Principal, requires(Role.READ)]) -> dict[str, Any]:
        async with unit_of_work() as uow:
            current = await uow.rule_sets.current()
            versions = await uow.rule_sets.versions(HISTORY)
            activations = await uow.rule_sets.activations(HISTORY)
        return {
            **rules_json(classifier.rules),
            "active": activation_json(current) if current is not None else None,
            "versions": [version_json(v) for v in versions],
            "activations": [activation_json(a) for a in activations],
        }

    @router.get(
        "/rules/{version}",
        summary="One stored version: text, content and status",
        responses={404: _PROBLEM},
    )
    async def get_version(version: str, _: Annotated[Principal, requires(Role.READ)]) -> Any:
        async with unit_of_work() as uow:
            stored = await uow.rule_sets.get(version)
        if stored is None:
            return problem(404, "not-found", "Not found", f"no rule set with version {version!r}")
        return version_json(stored, full=True)

    @router.get(
        "/rules/{version}/diff",
        summary="Where two versions differ: params, rules and every other setting",
        responses={404: _PROBLEM},
    )
    async def get_diff(
        version: str,
        _: Annotated[Principal, requires(Role.READ)],
        against: Annotated[str | None, Query(description="Default: the active version")] = None,
    ) -> Any:
        async with unit_of_work() as uow:
            if against is None:
                current = await uow.rule_sets.current()
                against = current.version if current is not None else version
            left = await uow.rule_sets.get(against)
            right = await uow.rule_sets.get(version)
        for name, stored in ((against, left), (version, right)):
            if stored is None:
                return problem(404, "not-found", "Not found", f"no rule set with version {name!r}")
        assert left is not None
        assert right is not None
        differences = diff(left.content, right.content)
        return {
            "version": version,
            "against": against,
            "params": {
                d.path.removeprefix("params."): {"before": d.before, "after": d.after}
                for d in differences
                if d.path.startswith("params.")
            },
            "dimensions": sorted(
                {d.path.split(".")[1] for d in differences if d.path.startswith("dimensions.")}
            ),
            "differences": [
                {"path": d.path, "before": d.before, "after": d.after} for d in differences
            ],
        }

    @router.post(
        "/rules:validate",
        summary="Check a rule set (application/yaml): 200, or 422 naming line, column, problem",
        openapi_extra=_YAML_BODY,
        responses={415: _PROBLEM, 422: _PROBLEM},
    )
    async def validate(request: Request, _: Annotated[Principal, requires(Role.READ)]) -> Any:
        found = await _submitted(request)
        if isinstance(found, JSONResponse):
            return found
        return {
            "valid": True,
            "version": found.rules.version,
            "label": found.rules.label,
            "dimensions": [d.name for d in found.rules.dimensions],
        }

    @router.post(
        "/rules:simulate",
        summary="What activating a candidate (application/yaml) would change, before doing it",
        openapi_extra=_YAML_BODY,
        responses={415: _PROBLEM, 422: _PROBLEM},
    )
    async def simulate(
        request: Request,
        who: Annotated[Principal, requires(Role.READ)],
        as_of: Annotated[datetime | None, Query(description="Default: now")] = None,
        rollout_percent: Annotated[float, Query(gt=0, le=100)] = 100,
        note: Annotated[str, Query(max_length=2_000)] = "",
    ) -> Any:
        found = await _submitted(request)
        if isinstance(found, JSONResponse):
            return found
        text = found.body
        at = (as_of or datetime.now(UTC)).astimezone(UTC)
        async with unit_of_work() as uow:
            # Kept as a draft: the version a later activation names.
            await rule_sets.keep(uow, found, by=who.name, note=note)
            current = await uow.rule_sets.current()
            bodies = {s.version: s.body for s in await uow.rule_sets.versions(HISTORY)}
        would = next_activation(current, found.rules.version, rollout_percent, at=at, by=who.name)
        job = SimulationRequest(
            database_url=database.database_url.get_secret_value(),
            topics=topics,
            candidate_body=text,
            previous=would.previous,
            percent=would.rollout_percent,
            activation=would.activation,
            base_version=current.version if current is not None else None,
            bodies=bodies,
            population=classifier.population.stats,
            churn=classifier.churn.model,
            as_of=at,
            playbooks_file=playbooks_file,
        )
        if "application/x-ndjson" in request.headers.get("accept", ""):
            return StreamingResponse(
                _progress_lines(job, workers), media_type="application/x-ndjson"
            )
        try:
            return await run_parallel(job, workers)
        except SimulationFailed as exc:
            return problem(500, "simulation-failed", "Simulation failed", str(exc))

    @router.post(
        "/rules:activate",
        summary="Put a stored version in force (all customers or a canary share); no restart",
        responses={404: _PROBLEM, 409: _PROBLEM},
    )
    async def activate(body: ActivateIn, who: Annotated[Principal, requires(Role.ADMIN)]) -> Any:
        try:
            async with unit_of_work() as uow:
                done = await rule_sets.activate(
                    uow,
                    body.version,
                    expected_active=body.expected_active,
                    rollout_percent=body.rollout_percent,
                    by=who.name,
                    note=body.note,
                )
        except UnknownRuleSet as exc:
            return problem(404, "not-found", "Not found", str(exc))
        except ActiveRuleSetMoved as exc:
            return problem(409, "conflict", "Active rule set moved", str(exc), active=exc.active)
        return activation_json(done)

    return router
