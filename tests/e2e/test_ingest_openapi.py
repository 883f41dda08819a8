"""Schemathesis drives the running ingest from its own OpenAPI document: no 5xx, and every
response matches what the document promises."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.support import Servers, ServiceProcess, isolated_topics, unique
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.keys import create_key_sync
from tierflow_common.settings import DatabaseSettings, KafkaSettings

pytestmark = pytest.mark.e2e


@schemathesis.serializer("application/x-ndjson", "application/jsonl", "application/jsonlines")
def _ndjson(_ctx: object, value: object) -> bytes:
    # The bulk body is documented as text; send generated text as-is, JSON-encode anything else.
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return orjson.dumps(value)


@dataclass(frozen=True)
class Ingest:
    url: str
    key: str


@pytest.fixture(scope="module")
def ingest(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    database = DatabaseSettings(database_url=servers.create_database(unique("openapi")))
    upgrade_head(database)
    _, key = create_key_sync(database, name="schemathesis", sources=["*"])
    topics = isolated_topics(partitions=1)
    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=servers.bootstrap_servers), topics))
    env = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "LOG_LEVEL": "WARNING",
        **topics.as_env(),
    }
    service = ServiceProcess("ingest", env, Path(tmp_path_factory.mktemp("openapi-logs")))
    service.start()
    try:
        yield Ingest(service.url, key)
    finally:
        service.stop()


def test_ingest_honours_its_openapi_document(ingest: Ingest) -> None:
    # Driven by hand: schemathesis' pytest plugin does not support pytest 9 yet.
    schema = schemathesis.openapi.from_url(f"{ingest.url}/openapi.json")
    headers = {"Authorization": f"Bearer {ingest.key}"}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]

        @given(case=operation.as_strategy())
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            # Business rules beyond the schema (event time bounds, source ownership) may reject
            # schema-valid events with a documented 4xx, so "positive data accepted" is excluded.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
        tested.append(operation.label)
    assert "POST /v1/events" in tested
    assert "POST /v1/events:batch" in tested
    assert "POST /v1/events:bulk" in tested
