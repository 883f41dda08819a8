"""`POST /v1/events:bulk`: NDJSON backfills, streamed line by line in constant memory.

Lines are validated as they arrive and published in chunks, each awaited (acks=all) before more
of the body is read, so memory stays bounded by one chunk whatever the upload's size. If the
broker fails, processing stops and the answer says from which line to resend (resending earlier
lines is harmless: duplicates are reported, never applied twice).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from tierflow_common.auth import KeyLookup, Principal
from tierflow_common.contract import CustomerEvent
from tierflow_common.errors_http import PROBLEM_SCHEMA
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.trace_context import TraceContext
from tierflow_ingest.domain.validation import FieldError
from tierflow_ingest.entrypoints import http_io, request_trace
from tierflow_ingest.entrypoints.examples import ndjson_example
from tierflow_ingest.entrypoints.metrics import REJECTED
from tierflow_ingest.entrypoints.routes import BEARER_SECURITY, COMMON_ERRORS, PROBLEM
from tierflow_ingest.exceptions import Overloaded
from tierflow_ingest.service_layer.intake import Accepted, Intake, RateLimiter
from tierflow_ingest.settings import IngestSettings

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/jsonlines")
BULK_RESULT = {
    "type": "object",
    "required": ["lines", "accepted", "duplicates", "rejected", "errors", "errors_truncated"],
    "properties": {
        "lines": {"type": "integer", "description": "Lines read (blank lines included)"},
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["line", "errors"],
                "properties": {
                    "line": {"type": "integer", "description": "1-based line number"},
                    "errors": PROBLEM_SCHEMA["properties"]["errors"],
                },
            },
        },
        "errors_truncated": {"type": "boolean"},
        "resend_from_line": {"type": ["integer", "null"]},
        "detail": {"type": "string"},
    },
}


class _Upload:
    def __init__(self, settings: IngestSettings, trace: TraceContext | None = None) -> None:
        self.settings = settings
        self.trace = trace  # the request's: the events without a traceparent of their own
        self.lines = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.errors: list[dict[str, Any]] = []
        self.truncated = False
        self.pending: list[tuple[int, CustomerEvent]] = []

    def reject(self, line: int, errors: list[FieldError]) -> None:
        self.rejected += 1
        REJECTED.labels(reason=errors[0].code if errors else "validation").inc()
        if len(self.errors) < self.settings.bulk_max_reported_errors:
            self.errors.append({"line": line, "errors": [e.as_dict() for e in errors]})
        else:
            self.truncated = True

    def body(self, **extra: Any) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
            "errors_truncated": self.truncated,
            **extra,
        }


class _BrokerStop(Exception):
    def __init__(self, line: int, detail: str) -> None:
        super().__init__(detail)
        self.line = line
        self.detail = detail


def build_bulk_router(
    intake: Intake,
    keys: KeyLookup,
    limiter: RateLimiter,
    settings: IngestSettings,
    admission: http_io.Admission,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """`admission`: the events routes' bound; an upload holds one place in it while it runs
    (it paces itself on the key's rate limit rather than being refused by it)."""
    router = APIRouter(prefix="/v1", tags=["events"])

    async def flush(upload: _Upload, key_id: str) -> None:
        if not upload.pending:
            return
        events = [e for _, e in upload.pending]
        first_line = upload.pending[0][0]
        await limiter.wait(key_id, len(events))
        try:
            outcomes = await intake.accept(events, upload.trace)
        except (BrokerUnavailable, Overloaded) as exc:
            raise _BrokerStop(first_line, str(exc)) from exc
        for (line, _), outcome in zip(upload.pending, outcomes, strict=True):
            if not isinstance(outcome, Accepted):
                raise _BrokerStop(line, outcome.reason)
            upload.accepted += 1
            upload.duplicates += bool(outcome.duplicate)
        upload.pending.clear()

    @router.post(
        "/events:bulk",
        summary="Backfill: NDJSON, one CloudEvent per line, streamed (millions of lines)",
        description=(
            "Answers with counts and a per-line error report (the first "
            "`INGEST_BULK_MAX_REPORTED_ERRORS`). Lines are published in chunks as they arrive; "
            "when the broker fails, `resend_from_line` says where to resume (503)."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string"}, "example": ndjson_example()}
                    for t in NDJSON_TYPES
                },
            },
            **BEARER_SECURITY,
        },
        responses={
            200: {
                "description": "Counts and errors",
                "content": {"application/json": {"schema": BULK_RESULT}},
            },
            **COMMON_ERRORS,
            503: {
                "description": "Broker unavailable: resend from `resend_from_line`",
                "content": {**PROBLEM, "application/json": {"schema": BULK_RESULT}},
            },
        },
    )
    async def post_bulk(request: Request) -> Response:
        key = http_io.authenticate_token(http_io.bearer_token(request), keys, settings)
        if isinstance(key, Response):
            return key
        wrong = http_io.check_media(request, NDJSON_TYPES)
        if wrong is not None:
            return wrong
        return await http_io.admitted(
            admission,
            settings,
            lambda: request_trace.traced(
                "POST /v1/events:bulk",
                request,
                request_trace.incoming(request),
                lambda trace: receive(request, key, trace),
            ),
        )

    async def receive(request: Request, key: Principal, trace: TraceContext) -> Response:
        upload = _Upload(settings, trace)
        now = clock()
        buffer = bytearray()
        skipping = False  # inside an over-long line: drop bytes until its newline

        async def handle(raw: bytes) -> None:
            upload.lines += 1
            if not raw.strip():
                return
            if len(raw) > settings.bulk_max_line_bytes:
                upload.reject(
                    upload.lines,
                    [
                        FieldError(
                            "(line)",
                            f"line longer than {settings.bulk_max_line_bytes} bytes",
                            "line_too_long",
                        )
                    ],
                )
                return
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                upload.reject(
                    upload.lines, [FieldError("(line)", f"not JSON: {exc}", "malformed_json")]
                )
                return
            checked = http_io.check_item(obj, key, now=now, settings=settings)
            if isinstance(checked, list):
                upload.reject(upload.lines, checked)
                return
            upload.pending.append((upload.lines, checked))
            if len(upload.pending) >= settings.bulk_chunk_events:
                await flush(upload, key.key_id)

        try:
            async for chunk in request.stream():
                buffer += chunk
                while True:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        break
                    if skipping:
                        skipping = False
                        del buffer[: newline + 1]
                        continue
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    await handle(line)
                if not skipping and len(buffer) > settings.bulk_max_line_bytes:
                    upload.lines += 1
                    upload.reject(
                        upload.lines,
                        [
                            FieldError(
                                "(line)",
                                f"line longer than {settings.bulk_max_line_bytes} bytes",
                                "line_too_long",
                            )
                        ],
                    )
                    buffer.clear()
                    skipping = True
                elif skipping:
                    buffer.clear()
            if buffer and not skipping:
                await handle(bytes(buffer))
            await flush(upload, key.key_id)
        except _BrokerStop as stop:
            return JSONResponse(
                upload.body(
                    resend_from_line=stop.line, detail=f"broker unavailable: {stop.detail}"
                ),
                status_code=503,
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        return JSONResponse(upload.body(resend_from_line=None), status_code=200)

    return router
