"""The trace an ingest request joins or starts, and its span.

The context comes from the event itself (CloudEvents distributed-tracing extension: the
`traceparent` / `tracestate` members in structured mode, `ce-traceparent` / `ce-tracestate` in
binary mode, both already in the parsed event), else from the request's W3C `traceparent`
header. Events that carry none get the request's on their record (`ce_traceparent`): the span's
context with tracing on, else the incoming one, else a new trace, so every accepted event's
records share one trace id downstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from opentelemetry.trace import SpanKind, StatusCode

from tierflow_common import tracing
from tierflow_common.trace_context import TraceContext, from_mapping, new_trace, of_span, parse

Handler = Callable[[TraceContext], Awaitable[Response]]


def incoming(request: Request, event: object = None) -> TraceContext | None:
    """The context the request brings: the (parsed, not yet validated) event's own, else the
    request's `traceparent` header; None when neither is a valid W3C trace context."""
    if isinstance(event, dict):
        own = from_mapping(event)
        if own is not None:
            return own
    headers = request.headers
    header = headers.get("traceparent")
    return parse(header, headers.get("tracestate")) if header else None


async def traced(
    name: str, request: Request, parent: TraceContext | None, handle: Handler
) -> Response:
    """Run `handle` with the context its records carry: with tracing on, inside a server
    span (child of `parent`, or a new trace's root); off, `parent` or a new trace."""
    if not tracing.enabled():
        return await handle(parent or new_trace())
    attributes = {"http.request.method": request.method, "url.path": request.scope["path"]}
    with tracing.span(name, parent, kind=SpanKind.SERVER, attributes=attributes) as span:
        response = await handle(of_span(span) or parent or new_trace())
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(StatusCode.ERROR)
        return response
