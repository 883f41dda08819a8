"""The ingest's fast paths give exactly what the plain paths they replace give.

- a batch validated in one call: the same events and the same rejections (field, reason, code)
  as `validate_event` item by item;
- the record built for an accepted event: the bytes `encode_event` gives (checked against the
  CloudEvents SDK in test_contract.py), on the partition aiokafka's default partitioner picks;
- the Authorization header read without a dependency: what `HTTPBearer(auto_error=False)` reads;
- `HotRoutes`: the same answers as the FastAPI routes it bypasses;
- the publisher awaiting a request's acks together: one result per event, failures named.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from fastapi import FastAPI
from fastapi.security import HTTPBearer
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from tierflow_common.auth import ANY_SOURCE, Principal, Role
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.kafka import murmur2, partition_for
from tierflow_common.keys import hash_key
from tierflow_ingest.adapters.publisher import KafkaPublisher, to_record
from tierflow_ingest.domain.validation import FieldError, validate_event, validate_events
from tierflow_ingest.entrypoints import http_io
from tierflow_ingest.entrypoints.examples import event_examples
from tierflow_ingest.entrypoints.routes import HotRoutes, build_router, hot_routes
from tierflow_ingest.service_layer.intake import Intake, RateLimiter
from tierflow_ingest.settings import IngestSettings

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
EXAMPLES: list[dict[str, Any]] = [e["value"] for e in event_examples().values()]

# Replacements that make an event invalid in one place, or leave it valid in another form.
FIELD_VALUES: dict[str, list[Any]] = {
    "specversion": ["1.0", "0.3", 1, None],
    "id": ["x", "", "y" * 257, 5],
    "source": ["shop", "pos", "", None],
    "subject": ["c-1", "", " c", "c" * 201, 42],
    "type": ["purchase", "refund", "profile", "teleport", 7, None],
    "time": [
        "2025-11-20T10:00:00Z",
        "2025-11-20T10:00:00+08:00",
        "2025-11-20T10:00:00",
        (NOW + timedelta(hours=1)).isoformat(),
        "1960-01-01T00:00:00Z",
        1763632800,
        "not a time",
    ],
    "datacontenttype": ["application/json", "text/plain", "application/vnd.shop+json; v=1"],
    "dataschema": ["https://schemas.example.com/p.json", "", "not a uri"],
    # Extension attributes: valid names and values, and what the spec forbids.
    "extra": [1, "x", True, 1.5, None, 2**31, {"a": 1}],
    "traceparent": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
    "comExampleExtension": ["value"],
    "a_b": ["value"],
}
DATA_VALUES: list[Any] = [
    "129.90",
    "-1",
    "oops",
    129.9,
    1e2,
    0,
    "1.0000001",
    None,
    "USD",
    "usd",
    [],
    {"x": 1},
]


@st.composite
def event_like(draw: st.DrawFn) -> Any:
    """A contract example, possibly broken: a field replaced or dropped, a data field changed."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([[1, 2], "event", 3, None]))
    event = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(FIELD_VALUES)))
        if draw(st.booleans()):
            event[name] = draw(st.sampled_from(FIELD_VALUES[name]))
        else:
            event.pop(name, None)
    data = event.get("data")
    if isinstance(data, dict) and draw(st.booleans()):
        key = draw(st.sampled_from([*sorted(data), "amount", "unknown"]))
        if draw(st.integers(0, 4)) == 0:
            data.pop(key, None)
        else:
            data[key] = draw(st.sampled_from(DATA_VALUES))
    return event


@given(st.lists(event_like(), max_size=8))
def test_a_batch_validated_at_once_gives_what_each_item_gives(objs: list[Any]) -> None:
    together = validate_events(copy.deepcopy(objs), now=NOW, max_future_skew=SKEW)
    one_by_one = [validate_event(o, now=NOW, max_future_skew=SKEW) for o in copy.deepcopy(objs)]
    assert together == one_by_one


def test_batch_rejections_name_each_field_as_single_events_do() -> None:
    good = EXAMPLES[0]
    bad = {**good, "subject": "", "data": {**good["data"], "amount": "-3"}}
    results = validate_events(
        [good, bad, {**good, "type": "teleport"}], now=NOW, max_future_skew=SKEW
    )
    assert not isinstance(results[0], list)
    assert results[1] == [
        FieldError("subject", "String should have at least 1 character", "string_too_short"),
        FieldError(
            "data.amount", "Input should be greater than or equal to 0", "greater_than_equal"
        ),
    ]
    assert isinstance(results[2], list)
    assert [(e.field, e.code) for e in results[2]] == [("type", "unknown_type")]


@given(st.lists(event_like(), max_size=6), st.booleans())
def test_check_items_gives_what_check_item_gives(objs: list[Any], any_source: bool) -> None:
    key = Principal(
        "k1", "test", frozenset({Role.INGEST}), (ANY_SOURCE,) if any_source else ("shop",)
    )
    settings = IngestSettings()
    together = http_io.check_items(copy.deepcopy(objs), key, now=NOW, settings=settings)
    one_by_one = [
        http_io.check_item(o, key, now=NOW, settings=settings) for o in copy.deepcopy(objs)
    ]
    assert together == one_by_one


def reference_record(event: Any) -> Any:
    """How the ingest built its records before: through `EmittedEvent` and `encode_event`."""
    attributes = dict(event.__pydantic_extra__ or {})
    if event.dataschema is not None:
        attributes["dataschema"] = event.dataschema
    envelope = EmittedEvent(
        id=event.id,
        type=event.type,
        source=event.source,
        subject=event.subject,
        time=event.time,
        attributes=attributes,
        datacontenttype=event.datacontenttype,
    )
    return encode_event(envelope, data_json=event.data.model_dump_json(exclude_unset=True).encode())


@given(st.lists(event_like(), min_size=1, max_size=4))
def test_records_are_the_bytes_encode_event_gives(objs: list[Any]) -> None:
    for checked in validate_events(objs, now=NOW, max_future_skew=SKEW):
        if not isinstance(checked, list):
            assert to_record(checked) == reference_record(checked)


def test_a_profile_patch_keeps_explicit_nulls_and_omits_unset_fields() -> None:
    profile = next(e for e in EXAMPLES if e["type"] == "profile")
    event = {**profile, "data": {"name": "Li", "region": None}}
    (checked,) = validate_events([event], now=NOW, max_future_skew=SKEW)
    assert not isinstance(checked, list)
    assert orjson.loads(to_record(checked).value) == {"name": "Li", "region": None}


@given(st.binary(max_size=80), st.integers(1, 64))
def test_partition_is_the_default_partitioners(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert murmur2(key) == aiokafka_murmur2(key)
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


HEADER_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["", "Bearer", "Bearer ", "bearer tf_x", "BEARER  tf_y ", "Basic abc", " x"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)


@given(HEADER_VALUES)
async def test_bearer_token_reads_the_header_as_httpbearer(value: str | None) -> None:
    headers = [] if value is None else [(b"authorization", value.encode())]
    request = Request({"type": "http", "headers": headers})
    credentials = await HTTPBearer(auto_error=False)(request)
    assert http_io.bearer_token(request) == (
        None if credentials is None else credentials.credentials
    )


class FakeProducer:
    """Acknowledges at once, or fails/holds the records of chosen keys."""

    def __init__(self, *, fail: bytes = b"", hold: bytes = b"", stall_metadata: bool = False):
        self.fail, self.hold, self.stall_metadata = fail, hold, stall_metadata
        self.sent: list[tuple[bytes, int]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        if self.stall_metadata:
            await asyncio.sleep(3600)
        return set(range(12))

    async def send(self, topic: str, **kw: Any) -> asyncio.Future[object]:
        if kw["key"] == self.fail:
            raise KafkaConnectionError("no connection to the leader")
        self.sent.append((kw["key"], kw["partition"]))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if kw["key"] != self.hold:
            future.set_result(None)
        return future


def started(producer: FakeProducer, timeout_s: float = 10.0) -> KafkaPublisher:
    publisher = KafkaPublisher(lambda: None, topic="t", max_in_flight=100, timeout_s=timeout_s)
    publisher.producer = producer
    publisher.started = True
    return publisher


def events(*subjects: str) -> list[Any]:
    objs = [{**EXAMPLES[0], "id": f"e-{s}", "subject": s} for s in subjects]
    checked = validate_events(objs, now=NOW, max_future_skew=SKEW)
    assert not any(isinstance(c, list) for c in checked)
    return checked


async def test_publisher_sends_each_record_to_its_default_partition() -> None:
    producer = FakeProducer()
    assert await started(producer).publish(events("a", "b", "c")) == [None, None, None]
    every = list(range(12))
    assert producer.sent == [(k, DefaultPartitioner()(k, every, every)) for k in (b"a", b"b", b"c")]


async def test_publisher_names_each_failed_record_and_keeps_the_others() -> None:
    publisher = started(FakeProducer(fail=b"b", hold=b"c"), timeout_s=0.2)
    results = await publisher.publish(events("a", "b", "c", "d"))
    assert (results[0], results[3]) == (None, None)
    assert isinstance(results[1], BrokerUnavailable)
    assert "leader" in str(results[1])
    assert isinstance(results[2], BrokerUnavailable)
    assert "in time" in str(results[2])
    assert publisher.in_flight == 0


async def test_publisher_fails_every_record_when_the_broker_is_unknown() -> None:
    publisher = started(FakeProducer(stall_metadata=True), timeout_s=0.2)
    results = await publisher.publish(events("a", "b"))
    assert all(isinstance(r, BrokerUnavailable) for r in results)
    assert publisher.in_flight == 0


class FakeReceipts:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    async def record(self, keys: Sequence[tuple[str, str, datetime]]) -> list[bool | None]:
        flags: list[bool | None] = []
        for source, event_id, _ in keys:
            flags.append((source, event_id) not in self.seen)
            self.seen.add((source, event_id))
        return flags


class FakeKeys:
    loaded = True

    def lookup(self, key: str) -> Principal | None:
        return {
            hash_key("tf_shop"): Principal("k1", "shop key", frozenset({Role.INGEST}), ("shop",)),
            hash_key("tf_read"): Principal("k2", "dashboard", frozenset({Role.READ}), ()),
        }.get(hash_key(key))


def ingest_app(*, hot: bool) -> FastAPI:
    settings = IngestSettings(max_batch_events=3, max_body_bytes=4096)
    intake = Intake(started(FakeProducer(hold=b"held"), timeout_s=0.2), FakeReceipts())  # type: ignore[arg-type]
    limiter = RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst)
    admission = http_io.Admission(settings.max_concurrent_requests)
    router = build_router(intake, FakeKeys(), limiter, settings, admission, clock=lambda: NOW)
    app = FastAPI()
    app.include_router(router)
    if hot:
        app.add_middleware(HotRoutes, routes=hot_routes(router))
    return app


CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
SHOP = {"authorization": "Bearer tf_shop"}
PURCHASE = {**EXAMPLES[0], "source": "shop"}
BINARY = {f"ce-{k}": v for k, v in PURCHASE.items() if k not in ("data", "datacontenttype")} | {
    "ce-id": "bin-1"
}
REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("/v1/events", CE, SHOP, orjson.dumps(PURCHASE)),
    ("/v1/events", CE, SHOP, orjson.dumps(PURCHASE)),  # a resend: duplicate
    ("/v1/events", "application/json", SHOP, orjson.dumps({**PURCHASE, "id": "o-2"})),
    ("/v1/events", CE, SHOP, orjson.dumps({**PURCHASE, "subject": "held", "id": "h"})),
    ("/v1/events", CE, SHOP, orjson.dumps({**PURCHASE, "subject": ""})),
    ("/v1/events", CE, SHOP, orjson.dumps({**PURCHASE, "source": "erp"})),
    ("/v1/events", CE, SHOP, b'{"specversion": "1.0",'),
    ("/v1/events", "text/plain", SHOP, orjson.dumps(PURCHASE)),
    ("/v1/events", CE, SHOP, b"[" + b" " * 5000 + b"]"),
    ("/v1/events", CE, {}, orjson.dumps(PURCHASE)),
    ("/v1/events", CE, {"authorization": "Bearer tf_nope"}, orjson.dumps(PURCHASE)),
    ("/v1/events", CE, {"authorization": "Basic tf_shop"}, orjson.dumps(PURCHASE)),
    ("/v1/events", CE, {"authorization": "Bearer tf_read"}, orjson.dumps(PURCHASE)),  # no role
    (
        "/v1/events:batch",
        BATCH,
        SHOP,
        orjson.dumps(
            [
                {**PURCHASE, "id": "b-1"},
                {**PURCHASE, "id": "b-2", "data": {"amount": "x"}},
                {**PURCHASE, "id": "b-3", "source": "erp"},
            ]
        ),
    ),
    ("/v1/events:batch", BATCH, SHOP, orjson.dumps([{**PURCHASE, "id": "b-1"}, PURCHASE])),
    ("/v1/events:batch", BATCH, SHOP, orjson.dumps([{**PURCHASE, "subject": "held"}])),
    ("/v1/events:batch", BATCH, SHOP, orjson.dumps([PURCHASE] * 4)),
    ("/v1/events:batch", BATCH, SHOP, orjson.dumps(PURCHASE)),
    ("/v1/events:batch", BATCH, SHOP, b"[]"),
    ("/v1/events:batch", CE, SHOP, b"[]"),
    ("/v1/events/", CE, SHOP, orjson.dumps(PURCHASE)),
    # Binary content mode: attributes in ce-* headers, the data as the body.
    ("/v1/events", "application/json", {**SHOP, **BINARY}, orjson.dumps(PURCHASE["data"])),
    ("/v1/events", "text/plain", {**SHOP, **BINARY}, b"hello"),
    ("/v1/events", "application/json", {**SHOP, **BINARY, "ce-Bad_Name": "x"}, b"{}"),
]


async def answers(app: FastAPI) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        for path, media, headers, body in REQUESTS:
            resp = await client.post(path, content=body, headers={"content-type": media, **headers})
            kept = {k: v for k, v in resp.headers.items() if k != "date"}
            out.append((resp.status_code, kept, resp.content))
        get = await client.get("/v1/events")
        out.append((get.status_code, dict(get.headers), get.content))
    return out


async def test_hot_routes_answer_as_the_framework_routes() -> None:
    hot, plain = await answers(ingest_app(hot=True)), await answers(ingest_app(hot=False))
    assert [a[0] for a in plain] == [202, 202, 202, 503, 422, 403, 400, 415, 413, 401, 401, 401,
                                     403, 200, 200, 503, 413, 400, 200, 415, 307, 202, 415,
                                     422, 405]  # fmt: skip
    assert hot == plain


def test_json_response_is_the_document_jsonresponse_sends() -> None:
    from fastapi.responses import JSONResponse  # noqa: PLC0415

    body = {"status": "accepted", "id": 'ü-\n-\u0001-"', "duplicate": None, "n": [1, True]}
    ours, theirs = http_io.json_response(body, 202), JSONResponse(body, status_code=202)
    assert (ours.status_code, ours.media_type) == (theirs.status_code, theirs.media_type)
    assert orjson.loads(ours.body) == orjson.loads(theirs.body)


@pytest.mark.parametrize("root", ["", "/ingest"])
async def test_hot_routes_match_below_the_root_path(root: str) -> None:
    seen: list[str] = []

    async def endpoint(request: Request) -> Any:
        seen.append(request.url.path)
        return http_io.json_response({}, 202)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append("app")
        await http_io.json_response({}, 404)(scope, receive, send)

    hot = HotRoutes(app, {"/v1/events": endpoint})
    transport = httpx.ASGITransport(app=hot, root_path=root)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        assert (await client.post(f"{root}/v1/events")).status_code == 202
        assert (await client.post(f"{root}/v1/events:bulk")).status_code == 404
    assert seen == [f"{root}/v1/events", "app"]
