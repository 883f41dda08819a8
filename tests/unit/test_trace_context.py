"""The W3C trace context an event carries: parsed and written by OpenTelemetry's propagator,
on the ingest's records, outbox rows and webhook requests; tracing off unless OTEL_* says."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tierflow_common import tracing
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.contract.events import parse_customer_event
from tierflow_common.outbox import with_trace_headers, with_traces
from tierflow_common.trace_context import (
    TraceContext,
    from_json,
    from_kafka_headers,
    new_trace,
    parse,
)
from tierflow_ingest.adapters.publisher import to_record
from tierflow_notifier.adapters.http import Post, with_trace

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_valid_context_is_kept_and_an_invalid_one_dropped() -> None:
    got = parse(TRACEPARENT, "congo=t61rcWkgMzE")
    assert got == TraceContext(TRACEPARENT, "congo=t61rcWkgMzE")
    assert got.trace_id == TRACE_ID
    assert parse(TRACEPARENT.upper()) is None  # the W3C format is lower-case hex
    for bad in ("", "not-a-trace", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", None):
        assert parse(bad) is None


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.sampled_from(["00", "01"]))
def test_any_valid_traceparent_round_trips(trace_id: int, span_id: int, flags: str) -> None:
    text = f"00-{trace_id:032x}-{span_id:016x}-{flags}"
    got = parse(text)
    assert got is not None
    assert got.traceparent == text
    assert from_json(got.json()) == got
    assert from_kafka_headers([("ce_id", b"x"), *got.kafka_headers()]) == got


def test_a_new_trace_is_valid_and_not_sampled() -> None:
    first, second = new_trace(), new_trace()
    assert parse(first.traceparent) == first
    assert first.traceparent.endswith("-00")
    assert first.trace_id != second.trace_id


def _event(**extensions: object) -> object:
    return parse_customer_event(
        {
            "specversion": "1.0",
            "id": "o-1",
            "source": "shop",
            "type": "purchase",
            "subject": "c-1",
            "time": "2026-01-01T00:00:00Z",
            "data": {"order_id": "o-1", "amount": "5.00", "currency": "USD"},
            **extensions,
        }
    )


def test_the_ingest_record_carries_the_request_trace_unless_the_event_has_its_own() -> None:
    request = TraceContext("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "k=v")
    headers = dict(to_record(_event(), request).headers)  # type: ignore[arg-type]
    assert headers["ce_traceparent"] == request.traceparent.encode()
    assert headers["ce_tracestate"] == b"k=v"
    own = dict(to_record(_event(traceparent=TRACEPARENT), request).headers)  # type: ignore[arg-type]
    assert own["ce_traceparent"] == TRACEPARENT.encode()
    assert "ce_tracestate" not in own
    plain = to_record(_event())  # type: ignore[arg-type]
    assert [n for n, _ in plain.headers if n.startswith("ce_trace")] == []


def test_outbox_rows_take_their_customer_trace_and_the_relay_writes_it() -> None:
    trace = TraceContext(TRACEPARENT)
    event = EmittedEvent(
        id="e", type="t", source="s", subject="c-1", time=datetime(2026, 1, 1, tzinfo=UTC)
    )
    other = EmittedEvent(
        id="f", type="t", source="s", subject="c-2", time=datetime(2026, 1, 1, tzinfo=UTC)
    )
    items = with_traces([("topic", event), ("topic", other)], {"c-1": trace})
    assert [i.trace for _, i in items] == [trace, None]  # type: ignore[union-attr]
    headers = with_trace_headers(encode_event(event).headers, trace)
    assert dict(headers)["ce_traceparent"] == TRACEPARENT.encode()
    assert headers == sorted(headers)
    # A record with a trace of its own keeps it.
    assert with_trace_headers(headers, new_trace()) == headers


def test_a_webhook_request_sends_the_traceparent_header() -> None:
    post = Post(headers={"content-type": "application/json"}, body=b"{}")
    assert with_trace(post, None) is post
    sent = with_trace(post, TraceContext(TRACEPARENT, "k=v"))
    assert sent.headers == {
        "content-type": "application/json",
        "traceparent": TRACEPARENT,
        "tracestate": "k=v",
    }


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_off_unless_an_exporter_is_configured(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.TracingSettings().exporter_names() == names
    try:
        assert tracing.configure_tracing("test") is bool(names)
        assert tracing.enabled() is bool(names)
    finally:
        tracing.shutdown_tracing()
    assert not tracing.enabled()


def test_spans_join_the_event_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test", exporters=[exporter])
    try:
        with tracing.span("outer", TraceContext(TRACEPARENT)) as outer:
            inner = tracing.start_span("customer", None, links=tracing.link_to_current())
            inner.end()
        (customer, batch) = exporter.get_finished_spans()
    finally:
        tracing.shutdown_tracing()
    assert f"{batch.context.trace_id:032x}" == TRACE_ID
    assert batch.parent is not None
    assert f"{batch.parent.span_id:016x}" == "00f067aa0ba902b7"
    # Without a trace of its own, a customer's span starts one, linked to the batch.
    assert customer.parent is None
    assert customer.context.trace_id != batch.context.trace_id
    assert [link.context.span_id for link in customer.links] == [outer.get_span_context().span_id]
