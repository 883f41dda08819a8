"""Request reading and error documents shared by the ingest endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tierflow_common.auth import ANY_SOURCE, AccessDenied, KeyLookup, Principal, Role, authorize
from tierflow_common.contract import CustomerEvent
from tierflow_common.errors_http import problem
from tierflow_ingest.domain.validation import FieldError, validate_event, validate_events
from tierflow_ingest.entrypoints.metrics import LOOP_LAG, REJECTED
from tierflow_ingest.settings import IngestSettings

_INGEST = Role.INGEST
ANONYMOUS = Principal(
    "anonymous", "authentication disabled", frozenset({Role.INGEST}), (ANY_SOURCE,)
)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def json_response(body: Any, status_code: int, headers: dict[str, str] | None = None) -> Response:
    """`JSONResponse` of the same document, serialised by orjson (several times faster)."""
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )


def bearer_token(request: Request) -> str | None:
    """What `HTTPBearer(auto_error=False)` makes of the Authorization header, without a
    dependency to solve per request: the credentials of a `Bearer` header, else None."""
    authorization = request.headers.get("authorization")
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if not scheme or not token or scheme.lower() != "bearer":
        return None
    return token


def authenticate_token(
    token: str | None, keys: KeyLookup, settings: IngestSettings
) -> Principal | JSONResponse:
    """The `ingest` key a bearer token stands for, or the 401/403 problem (in-memory lookup:
    tierflow_common.keys.KeyCache; refusals are tierflow_common.auth's, as on every route)."""
    if not settings.auth_required:
        return ANONYMOUS
    key = keys.lookup(token) if token is not None else None
    # The accepted case inline: this runs per request on the hot routes (a function call more
    # cost about half a microsecond, measured).
    if key is not None and _INGEST in key.roles:
        return key
    denied = authorize(key, Role.INGEST, presented=token is not None)
    assert isinstance(denied, AccessDenied)
    REJECTED.labels(reason="unauthorized" if denied.status == 401 else "forbidden").inc()
    return denied.response()


def forbidden_source(key: Principal, source: str) -> FieldError:
    return FieldError(
        "source",
        f"API key {key.key_id} ({key.name}) may not send events for source {source!r}",
        "forbidden_source",
    )


def check_item(
    obj: Any, key: Principal, *, now: datetime, settings: IngestSettings
) -> CustomerEvent | list[FieldError]:
    """One batch or bulk item: valid, and from a source the key owns (else why not)."""
    checked = validate_event(
        obj,
        now=now,
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        min_year=settings.min_event_year,
    )
    if not isinstance(checked, list) and not key.owns(checked.source):
        return [forbidden_source(key, checked.source)]
    return checked


def check_items(
    objs: list[Any], key: Principal, *, now: datetime, settings: IngestSettings
) -> list[CustomerEvent | list[FieldError]]:
    """`check_item` of each batch item, in order, the items validated together."""
    checked = validate_events(
        objs,
        now=now,
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        min_year=settings.min_event_year,
    )
    if ANY_SOURCE in key.sources:
        return checked
    return [
        [forbidden_source(key, c.source)]
        if not isinstance(c, list) and not key.owns(c.source)
        else c
        for c in checked
    ]


def check_media(request: Request, allowed: tuple[str, ...]) -> JSONResponse | None:
    media = media_type(request)
    if media in allowed:
        return None
    REJECTED.labels(reason="content_type").inc()
    return problem(
        415,
        "unsupported-media-type",
        "Unsupported content type",
        f"content-type {media or '(none)'!r} is not accepted here; use {' or '.join(allowed)}",
    )


async def read_json(
    request: Request, allowed: tuple[str, ...], settings: IngestSettings
) -> Any | JSONResponse:
    wrong = check_media(request, allowed)
    if wrong is not None:
        return wrong
    body = await read_body(request, settings)
    if isinstance(body, JSONResponse):
        return body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        REJECTED.labels(reason="malformed_json").inc()
        return problem(400, "malformed-json", "Malformed JSON", f"body is not valid JSON: {exc}")


async def read_body(request: Request, settings: IngestSettings) -> bytearray | JSONResponse:
    """The request's body, or the 413 problem once it is longer than the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
        REJECTED.labels(reason="too_large").inc()
        return problem(
            413,
            "payload-too-large",
            "Body too large",
            f"body is {declared} bytes; the limit is {settings.max_body_bytes}",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > settings.max_body_bytes:
            REJECTED.labels(reason="too_large").inc()
            return problem(
                413,
                "payload-too-large",
                "Body too large",
                f"body exceeds the limit of {settings.max_body_bytes} bytes",
            )
    return body


@dataclass
class Admission:
    """Requests let in at once, at most `limit`: under overload the next ones are answered
    before their body is read, so memory (bodies, parsed items, events awaiting acks) and the
    wait of those let in stay bounded, whatever the number of clients.

    A CPU-bound process rarely has many requests in progress (each runs to its end once it has
    the CPU) while hundreds wait unread in its sockets; what grows then is the event loop's lag.
    Past `shed_lag_s` (smoothed over about half a second, see `watch_loop`) every new request is
    refused too, so the CPU goes to answering them quickly instead of queueing them all."""

    limit: int
    shed_lag_s: float = 0.0  # 0: no shedding on lag
    active: int = 0
    lag_s: float = 0.0

    def enter(self) -> bool:
        if self.active >= self.limit or self.lagging():
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1

    def lagging(self) -> bool:
        return 0 < self.shed_lag_s < self.lag_s

    async def watch_loop(self, interval_s: float = 0.02, smoothing_s: float = 0.5) -> None:
        """Keep `lag_s`: how late a timer fires, an exponential average over ~`smoothing_s`
        (one late tick, a garbage collection say, sheds nothing)."""
        loop = asyncio.get_running_loop()
        weight = min(1.0, interval_s / smoothing_s)
        while True:
            began = loop.time()
            await asyncio.sleep(interval_s)
            late = max(0.0, loop.time() - began - interval_s)
            self.lag_s += weight * (late - self.lag_s)
            LOOP_LAG.set(self.lag_s)


async def admitted(
    admission: Admission, settings: IngestSettings, respond: Callable[[], Awaitable[Response]]
) -> Response:
    """`respond()` inside the admission bound, or 503 + Retry-After past it (body unread)."""
    if not admission.enter():
        return saturated(settings, admission)
    try:
        return await respond()
    finally:
        admission.leave()


def saturated(settings: IngestSettings, admission: Admission) -> JSONResponse:
    REJECTED.labels(reason="saturated").inc()
    why = (
        f"its event loop lags {admission.lag_s * 1000:.0f} ms"
        if admission.lagging()
        else f"{admission.active} requests in progress"
    )
    return unavailable(settings, f"ingest is saturated: {why}; retry later")


def unavailable(settings: IngestSettings, detail: str, **extra: Any) -> JSONResponse:
    return problem(
        503,
        "broker-unavailable",
        "Event broker unavailable",
        detail,
        headers={"Retry-After": str(settings.retry_after_s)},
        **extra,
    )


def rate_limited(retry_after: int, n: int) -> JSONResponse:
    REJECTED.labels(reason="rate_limited").inc()
    return problem(
        429,
        "rate-limited",
        "Rate limit exceeded",
        f"{n} event(s) exceed this API key's rate limit; retry after {retry_after}s",
        headers={"Retry-After": str(retry_after)},
    )


def summary(errors: list[FieldError]) -> str:
    return "; ".join(f"{e.field}: {e.reason}" for e in errors)
