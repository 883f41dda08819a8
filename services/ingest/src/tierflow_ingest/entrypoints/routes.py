"""`POST /v1/events` (one CloudEvent) and `POST /v1/events:batch` (a JSON array)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from tierflow_common.auth import BEARER, KeyLookup, Principal, Role
from tierflow_common.contract.events import (
    customer_event_json_schema,
    customer_event_openapi_schema,
)
from tierflow_common.errors_http import PROBLEM_SCHEMA, problem
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.trace_context import TraceContext
from tierflow_ingest.domain.validation import validate_event
from tierflow_ingest.entrypoints import binary_mode, http_io, request_trace
from tierflow_ingest.entrypoints.examples import batch_example, event_examples
from tierflow_ingest.entrypoints.metrics import PUBLISH_SECONDS, REJECTED
from tierflow_ingest.exceptions import Overloaded
from tierflow_ingest.service_layer.intake import Accepted, Intake, Outcome, RateLimiter
from tierflow_ingest.settings import IngestSettings

SINGLE_TYPES = ("application/cloudevents+json", "application/json")
BATCH_TYPES = ("application/cloudevents-batch+json", "application/json")
# In the OpenAPI document event models live under components; the schema endpoint serves the
# standalone JSON Schema (with its own $defs), as published under docs/schemas.
EVENT_SCHEMA, EVENT_COMPONENTS = customer_event_openapi_schema()
STANDALONE_EVENT_SCHEMA = customer_event_json_schema()
PROBLEM = {"application/problem+json": {"schema": PROBLEM_SCHEMA}}
# The ingest's routes read the header themselves (`http_io.bearer_token`, no dependency solved per
# request, and INGEST_AUTH_REQUIRED honoured) and declare the scheme tierflow_common.auth's
# routes use, with the role they need.
BEARER_SECURITY: dict[str, Any] = {"security": [{BEARER.scheme_name: [str(Role.INGEST)]}]}

COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON", "content": PROBLEM},
    401: {"description": "Missing or invalid API key", "content": PROBLEM},
    413: {"description": "Body too large", "content": PROBLEM},
    415: {"description": "Wrong content type", "content": PROBLEM},
    429: {"description": "Over the key's rate limit; see Retry-After", "content": PROBLEM},
    503: {"description": "Broker unavailable; retry after Retry-After", "content": PROBLEM},
}
ITEM_RESULT = {
    "type": "object",
    "required": ["index", "status"],
    "properties": {
        "index": {"type": "integer"},
        "status": {"enum": ["accepted", "rejected", "failed"]},
        "id": {"type": "string"},
        "duplicate": {"type": ["boolean", "null"]},
        "errors": PROBLEM_SCHEMA["properties"]["errors"],
        "reason": {"type": "string"},
    },
}
BATCH_RESULT = {
    "type": "object",
    "required": ["accepted", "duplicates", "rejected", "failed", "results"],
    "properties": {
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
        "failed": {"type": "integer"},
        "results": {"type": "array", "items": ITEM_RESULT},
    },
}


async def publish(
    intake: Intake, events: list[Any], settings: IngestSettings, trace: TraceContext | None = None
) -> list[Outcome] | Response:
    try:
        with PUBLISH_SECONDS.time():
            return await intake.accept(events, trace)
    except Overloaded as exc:
        return http_io.unavailable(settings, f"ingest is saturated: {exc}")
    except BrokerUnavailable as exc:
        return http_io.unavailable(settings, f"event not stored: {exc}")


def build_router(
    intake: Intake,
    keys: KeyLookup,
    limiter: RateLimiter,
    settings: IngestSettings,
    admission: http_io.Admission,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """`admission`: the bound on requests in progress, shared with the bulk route (passed in,
    never made here, so no route can end up with a bound of its own)."""
    router = APIRouter(prefix="/v1", tags=["events"])
    skew = timedelta(seconds=settings.max_future_skew_s)

    @router.post(
        "/events",
        status_code=202,
        summary="Accept one CloudEvent (structured or binary HTTP content mode)",
        description=(
            "Structured mode: the event as `application/cloudevents+json` (or `application/json` "
            "without a `ce-specversion` header). Binary mode (CloudEvents HTTP binding): the "
            "attributes as `ce-*` headers (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, "
            "`ce-subject`, `ce-time`, optional `ce-dataschema` and extensions), the `data` as "
            "the body, its JSON media type as `Content-Type`. Extension attributes (lower-case "
            "a-z0-9 names of at most 20 characters; string, integer or boolean values) are kept "
            "and forwarded as `ce_*` Kafka headers. Answers 202 only after the broker "
            "acknowledged the event (acks=all). Resending the same (source, id) is safe: it is "
            "reported as `duplicate` and the classifier applies each event once."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": EVENT_SCHEMA, "examples": event_examples()} for t in SINGLE_TYPES
                },
            },
            **BEARER_SECURITY,
        },
        responses={
            202: {
                "description": "Durably accepted",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["status", "id", "source", "duplicate"],
                            "properties": {
                                "status": {"const": "accepted"},
                                "id": {"type": "string"},
                                "source": {"type": "string"},
                                "duplicate": {"type": ["boolean", "null"]},
                            },
                        }
                    }
                },
            },
            **COMMON_ERRORS,
            403: {"description": "The key does not own the event's source", "content": PROBLEM},
            422: {"description": "Invalid event; `errors` lists each field", "content": PROBLEM},
        },
    )
    async def post_event(request: Request) -> Response:
        key = http_io.authenticate_token(http_io.bearer_token(request), keys, settings)
        if isinstance(key, Response):
            return key
        return await admitted(key, lambda: read_event(request, key))

    async def admitted(key: Principal, respond: Callable[[], Awaitable[Response]]) -> Response:
        """`respond()` inside the admission bound; before the body is read (what refusing
        costs under overload), 429 for a key with no event left and 503 past the bound."""
        wait = limiter.exhausted(key.key_id)
        if wait is not None:
            return http_io.rate_limited(wait, 1)
        return await http_io.admitted(admission, settings, respond)

    async def read_event(request: Request, key: Principal) -> Response:
        if binary_mode.is_binary(request, http_io.media_type(request)):
            parsed = await binary_mode.read_event(request, settings)
        else:
            parsed = await http_io.read_json(request, SINGLE_TYPES, settings)
        if isinstance(parsed, Response):
            return parsed
        return await request_trace.traced(
            "POST /v1/events",
            request,
            request_trace.incoming(request, parsed),
            lambda trace: accept_event(key, parsed, trace),
        )

    async def accept_event(key: Principal, parsed: Any, trace: TraceContext) -> Response:
        result = validate_event(
            parsed, now=clock(), max_future_skew=skew, min_year=settings.min_event_year
        )
        if isinstance(result, list):
            REJECTED.labels(reason="validation").inc()
            return problem(
                422,
                "invalid-event",
                "Invalid event",
                http_io.summary(result),
                errors=[e.as_dict() for e in result],
            )
        if not key.owns(result.source):
            REJECTED.labels(reason="forbidden").inc()
            err = http_io.forbidden_source(key, result.source)
            return problem(
                403, "forbidden-source", "Source not allowed", err.reason, errors=[err.as_dict()]
            )
        wait = limiter.check(key.key_id, 1)
        if wait is not None:
            return http_io.rate_limited(wait, 1)
        outcome = await publish(intake, [result], settings, trace)
        if isinstance(outcome, Response):
            return outcome
        (first,) = outcome
        if not isinstance(first, Accepted):
            return http_io.unavailable(settings, f"event not stored: {first.reason}")
        return http_io.json_response(
            {
                "status": "accepted",
                "id": result.id,
                "source": result.source,
                "duplicate": first.duplicate,
            },
            202,
        )

    @router.post(
        "/events:batch",
        summary="Accept a JSON array of CloudEvents; each item accepted or rejected on its own",
        description=(
            "Every item is either accepted (durably acknowledged), rejected (with its index, "
            "field path and reason) or failed (the broker did not acknowledge it: resend it; the "
            "response is then 503). Limits: `INGEST_MAX_BATCH_EVENTS` events and "
            "`INGEST_MAX_BODY_BYTES` bytes."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    t: {
                        "schema": {"type": "array", "items": EVENT_SCHEMA},
                        "example": batch_example(),
                    }
                    for t in BATCH_TYPES
                },
            },
            **BEARER_SECURITY,
        },
        responses={
            200: {
                "description": "Per-item results",
                "content": {"application/json": {"schema": BATCH_RESULT}},
            },
            **COMMON_ERRORS,
            503: {
                "description": "Broker unavailable (problem), or some items failed (results)",
                "content": {**PROBLEM, "application/json": {"schema": BATCH_RESULT}},
            },
        },
    )
    async def post_batch(request: Request) -> Response:
        key = http_io.authenticate_token(http_io.bearer_token(request), keys, settings)
        if isinstance(key, Response):
            return key
        return await admitted(key, lambda: read_batch(request, key))

    async def read_batch(request: Request, key: Principal) -> Response:
        parsed = await http_io.read_json(request, BATCH_TYPES, settings)
        if isinstance(parsed, Response):
            return parsed
        return await request_trace.traced(
            "POST /v1/events:batch",
            request,
            request_trace.incoming(request),
            lambda trace: accept_batch(key, parsed, trace),
        )

    async def accept_batch(key: Principal, parsed: Any, trace: TraceContext) -> Response:
        if not isinstance(parsed, list):
            REJECTED.labels(reason="malformed_json").inc()
            return problem(
                400, "not-an-array", "Batch must be a JSON array", "body is not an array"
            )
        if len(parsed) > settings.max_batch_events:
            REJECTED.labels(reason="too_large").inc()
            return problem(
                413,
                "batch-too-large",
                "Too many events",
                f"batch has {len(parsed)} events; the limit is {settings.max_batch_events}",
            )
        results: list[dict[str, Any]] = [{} for _ in parsed]
        valid: list[tuple[int, Any]] = []
        checked_items = http_io.check_items(parsed, key, now=clock(), settings=settings)
        for i, checked in enumerate(checked_items):
            if isinstance(checked, list):
                REJECTED.labels(reason=checked[0].code if checked else "validation").inc()
                results[i] = {
                    "index": i,
                    "status": "rejected",
                    "errors": [e.as_dict() for e in checked],
                }
            else:
                valid.append((i, checked))
        if valid:
            wait = limiter.check(key.key_id, len(valid))
            if wait is not None:
                return http_io.rate_limited(wait, len(valid))
        outcome = await publish(intake, [e for _, e in valid], settings, trace) if valid else []
        if isinstance(outcome, Response):
            return outcome
        for (i, event), item in zip(valid, outcome, strict=True):
            if isinstance(item, Accepted):
                results[i] = {
                    "index": i,
                    "status": "accepted",
                    "id": event.id,
                    "duplicate": item.duplicate,
                }
            else:
                results[i] = {"index": i, "status": "failed", "id": event.id, "reason": item.reason}
        counts = {
            s: sum(1 for r in results if r["status"] == s)
            for s in ("accepted", "rejected", "failed")
        }
        body = {
            **counts,
            "duplicates": sum(1 for r in results if r.get("duplicate")),
            "results": results,
        }
        failed = counts["failed"]
        headers = {"Retry-After": str(settings.retry_after_s)} if failed else None
        return http_io.json_response(body, 503 if failed else 200, headers)

    @router.get(
        "/schemas/customer-event",
        summary="JSON Schema of accepted events",
        openapi_extra=BEARER_SECURITY,
        responses={401: COMMON_ERRORS[401]},
    )
    async def event_schema(request: Request) -> Any:
        key = http_io.authenticate_token(http_io.bearer_token(request), keys, settings)
        return key if isinstance(key, Response) else STANDALONE_EVENT_SCHEMA

    return router


Endpoint = Callable[[Request], Awaitable[Response]]
HOT_PATHS = ("/v1/events", "/v1/events:batch")


def hot_routes(router: APIRouter) -> dict[str, Endpoint]:
    """The POST endpoints of `build_router`'s router by path, for `HotRoutes`."""
    return {
        route.path: route.endpoint
        for route in router.routes
        if isinstance(route, APIRoute)
        and route.path in HOT_PATHS
        and "POST" in (route.methods or ())
    }


class HotRoutes:
    """ASGI middleware: a POST to one of `routes` goes straight to its endpoint, skipping the
    framework's routing, exception and dependency layers (about 50 µs of CPU a request, as much
    as the endpoint's own work for a single event); the endpoints are the routes' own, so the
    answers are the same (a test checks). Everything else, these routes' OpenAPI entries
    included, is the application's. Add it with `app.add_middleware(HotRoutes, routes=...)`:
    it then runs inside Starlette's server-error middleware, as the routes did."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Endpoint]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.routes.get(_route_path(scope))
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path routes match against: without the application's root path (as Starlette)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path
