"""OpenTelemetry spans for the services, off unless the standard `OTEL_*` variables ask.

`configure_tracing` (each service's bootstrap) installs the SDK's tracer provider only when an
exporter is configured: `OTEL_TRACES_EXPORTER` (not `none`) or an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and not
`OTEL_SDK_DISABLED`. Everything else the SDK reads itself: endpoint, headers, timeout and
compression (the OTLP/HTTP exporter), sampler (`OTEL_TRACES_SAMPLER`), resource
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), batching (`OTEL_BSP_*`), limits.

Off, `enabled()` is False and the hot paths create no span at all (not even a no-op one): what
remains is carrying the event's trace context (tierflow_common.trace_context) on its records.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tierflow_common.trace_context import TraceContext, of_span

log = structlog.get_logger(__name__)
INSTRUMENTATION = "tierflow"
_OTLP_NAMES = frozenset({"otlp", "otlp_proto_http"})


class TracingSettings(BaseSettings):
    """Only what decides whether tracing is on; the SDK reads the rest of `OTEL_*` itself."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore")

    sdk_disabled: bool = False
    traces_exporter: str | None = None  # e.g. otlp, console, none (comma-separated)
    exporter_otlp_endpoint: str | None = None
    exporter_otlp_traces_endpoint: str | None = None

    def exporter_names(self) -> list[str]:
        if self.sdk_disabled:
            return []
        if self.traces_exporter is not None:
            names = [n.strip() for n in self.traces_exporter.split(",") if n.strip()]
            return [n for n in names if n != "none"]
        if self.exporter_otlp_endpoint or self.exporter_otlp_traces_endpoint:
            return ["otlp"]
        return []


@dataclass
class _State:
    tracer: trace.Tracer | None = None
    provider: TracerProvider | None = None


_STATE = _State()


def enabled() -> bool:
    """Whether spans are recorded in this process."""
    return _STATE.tracer is not None


def tracer() -> trace.Tracer:
    """The process's tracer (a no-op one while tracing is off)."""
    return _STATE.tracer or trace.get_tracer(INSTRUMENTATION)


def _exporter(name: str) -> SpanExporter:
    if name in _OTLP_NAMES:
        # Only the OTLP/HTTP exporter is installed; it reads OTEL_EXPORTER_OTLP_* itself.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    # Any other exporter the SDK's entry points name (e.g. `console`).
    (found,) = entry_points(group="opentelemetry_traces_exporter", name=name) or (None,)
    if found is None:
        raise ValueError(f"OTEL_TRACES_EXPORTER: no trace exporter named {name!r} is installed")
    exporter: SpanExporter = found.load()()
    return exporter


def configure_tracing(
    service: str,
    settings: TracingSettings | None = None,
    *,
    exporters: Sequence[SpanExporter] = (),
) -> bool:
    """Record spans when `OTEL_*` configures an exporter, or to `exporters` (tests: an
    in-memory exporter, spans exported as each ends). Returns whether tracing is on."""
    names = (settings or TracingSettings()).exporter_names()
    if not names and not exporters:
        return False
    detected = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    resource = Resource.create({SERVICE_NAME: str(detected or f"tierflow-{service}")})
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if _STATE.provider is not None:
        _STATE.provider.shutdown()
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer(INSTRUMENTATION)
    log.info("tracing_on", service=service, exporters=names or ["in-process"])
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and go back to off."""
    provider, _STATE.provider, _STATE.tracer = _STATE.provider, None, None
    if provider is not None:
        provider.shutdown()


@contextmanager
def span(
    name: str,
    parent: TraceContext | None = None,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
    links: Sequence[trace.Link] = (),
) -> Iterator[trace.Span]:
    """A span (current while the block runs), child of `parent` (the remote context an event
    carried) or, without one, of the current span. Only call where `enabled()`."""
    context = parent.context() if parent is not None else None
    with tracer().start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, links=links
    ) as current:
        yield current


def start_span(
    name: str,
    parent: TraceContext | None,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
    links: Sequence[trace.Link] = (),
) -> trace.Span:
    """A span the caller ends, child of `parent` or, without one, the root of a new trace (a
    batch's customer without a trace of its own is not put in the batch's trace: a link to
    the batch says where it ran)."""
    context = parent.context() if parent is not None else Context()
    return tracer().start_span(name, context=context, kind=kind, attributes=attributes, links=links)


def link_to_current() -> list[trace.Link]:
    """A link to the current span (the batch a customer's span ran in), if there is one."""
    current = trace.get_current_span().get_span_context()
    return [trace.Link(current)] if current.is_valid else []


def context_of(span_: trace.Span, fallback: TraceContext | None) -> TraceContext | None:
    """What a span's records carry: the span's context, or `fallback` if it has none."""
    return of_span(span_) or fallback
