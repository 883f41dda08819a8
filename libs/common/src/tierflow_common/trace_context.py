"""The W3C trace context an event carries through the pipeline (CloudEvents distributed-tracing
extension: `traceparent`, `tracestate`).

A value only: parsed and written by OpenTelemetry's `TraceContextTextMapPropagator` (never by
hand), kept on outbox rows and care actions (JSON, `trace_context`), written as `ce_traceparent`
/ `ce_tracestate` on Kafka records and as `traceparent` / `tracestate` on HTTP requests. It
travels whether or not spans are recorded (tierflow_common.tracing), so a trace id follows an
event across topics either way.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
KAFKA_TRACEPARENT = "ce_traceparent"
KAFKA_TRACESTATE = "ce_tracestate"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid W3C trace context (make one with `parse`, `of_span` or `new_trace`)."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        """The 32 hex digits of the trace id."""
        return self.traceparent.split("-")[1]

    def carrier(self) -> dict[str, str]:
        """As W3C headers (`traceparent`, `tracestate`)."""
        out = {TRACEPARENT: self.traceparent}
        if self.tracestate:
            out[TRACESTATE] = self.tracestate
        return out

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """As the CloudEvents Kafka binding writes the extension (`ce_traceparent`, ...)."""
        out = [(KAFKA_TRACEPARENT, self.traceparent.encode())]
        if self.tracestate:
            out.append((KAFKA_TRACESTATE, self.tracestate.encode()))
        return out

    def attributes(self) -> dict[str, str]:
        """As CloudEvents extension attributes (the same names as the W3C headers)."""
        return self.carrier()

    def context(self) -> Context:
        """An OpenTelemetry context whose (remote) parent span is this one."""
        return PROPAGATOR.extract(self.carrier())

    def json(self) -> str:
        """The `trace_context` column's JSON."""
        return orjson.dumps(self.carrier()).decode()


@functools.lru_cache(maxsize=8192)
def parse(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """The context of valid W3C headers, normalised by the propagator; None when absent or
    invalid (a malformed traceparent is dropped, as the W3C spec says, not carried on).
    Cached: a batch's records often share their cause's context."""
    if not traceparent:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    span_context = trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context()
    if not span_context.is_valid:
        return None
    if not tracestate and len(traceparent) == _CANONICAL_LENGTH and traceparent[:3] == "00-":
        return TraceContext(traceparent)  # accepted as version 00: already what inject writes
    return _of_span_context(span_context)


_CANONICAL_LENGTH = 55  # 00-<32 hex>-<16 hex>-<2 hex>


def _of_span_context(span_context: trace.SpanContext) -> TraceContext:
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    return TraceContext(carrier[TRACEPARENT], carrier.get(TRACESTATE) or None)


def of_span(span: trace.Span) -> TraceContext | None:
    """The context a span's children take (None for a span that is not valid)."""
    span_context = span.get_span_context()
    return _of_span_context(span_context) if span_context.is_valid else None


def new_trace() -> TraceContext:
    """A new trace, not sampled, for an event that came without one while no spans are
    recorded: its id still follows the event's records (ids as the SDK's RandomIdGenerator
    draws them)."""
    trace_id = random.getrandbits(128) or 1  # an id, not a secret (as the SDK)
    span_id = random.getrandbits(64) or 1
    return TraceContext(f"00-{trace_id:032x}-{span_id:016x}-00")


def from_mapping(values: Mapping[str, Any]) -> TraceContext | None:
    """The context in W3C headers or extension attributes (`traceparent`, `tracestate`)."""
    traceparent = values.get(TRACEPARENT)
    tracestate = values.get(TRACESTATE)
    return parse(
        traceparent if isinstance(traceparent, str) else None,
        tracestate if isinstance(tracestate, str) else None,
    )


def from_kafka_headers(headers: Iterable[tuple[str, Any]]) -> TraceContext | None:
    """The context a record's `ce_traceparent` / `ce_tracestate` headers carry."""
    traceparent: str | None = None
    tracestate: str | None = None
    for name, value in headers:
        if name == KAFKA_TRACEPARENT:
            traceparent = bytes(value).decode("utf-8", "replace")
        elif name == KAFKA_TRACESTATE:
            tracestate = bytes(value).decode("utf-8", "replace")
    return parse(traceparent, tracestate)


def from_json(text: str | None) -> TraceContext | None:
    """The context of a `trace_context` column (None for NULL)."""
    if not text:
        return None
    value = orjson.loads(text)
    return from_mapping(value) if isinstance(value, dict) else None
