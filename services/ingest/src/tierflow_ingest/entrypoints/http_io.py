"""Request reading and error documents shared by the ingest endpoints."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from tierflow_common.contract import CustomerEvent
from tierflow_ingest.adapters.api_keys import KeyCache
from tierflow_ingest.domain.access import ANY_SOURCE, ApiKey
from tierflow_ingest.domain.validation import FieldError, validate_event
from tierflow_ingest.entrypoints.metrics import REJECTED
from tierflow_ingest.entrypoints.problems import problem
from tierflow_ingest.settings import IngestSettings

ANONYMOUS = ApiKey("anonymous", "authentication disabled", frozenset({ANY_SOURCE}))


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def authenticate(
    credentials: HTTPAuthorizationCredentials | None, keys: KeyCache, settings: IngestSettings
) -> ApiKey | JSONResponse:
    if not settings.auth_required:
        return ANONYMOUS
    if credentials is None or credentials.scheme.lower() != "bearer":
        REJECTED.labels(reason="unauthorized").inc()
        return problem(
            401,
            "unauthorized",
            "API key required",
            "send 'Authorization: Bearer <key>'; create keys with `tierflow keys create`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = keys.lookup(credentials.credentials)
    if key is None:
        REJECTED.labels(reason="unauthorized").inc()
        return problem(
            401,
            "unauthorized",
            "Invalid API key",
            "the API key is unknown or revoked",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


def forbidden_source(key: ApiKey, source: str) -> FieldError:
    return FieldError(
        "source",
        f"API key {key.key_id} ({key.name}) may not send events for source {source!r}",
        "forbidden_source",
    )


def check_item(
    obj: Any, key: ApiKey, *, now: datetime, settings: IngestSettings
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
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        REJECTED.labels(reason="malformed_json").inc()
        return problem(400, "malformed-json", "Malformed JSON", f"body is not valid JSON: {exc}")


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
