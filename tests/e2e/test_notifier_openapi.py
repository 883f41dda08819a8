"""Schemathesis drives the running notifier's care-action routes (the queue, ack, reassign,
cancel, complete) from its own OpenAPI document: no 5xx, and every response is what the
document promises (a bad cursor or body is a 4xx problem, never a crash)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.notifier_support import playbook_text, write_playbook
from tests.support import Servers, ServiceProcess, isolated_topics, unique
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.keys import create_key_sync
from tierflow_common.settings import DatabaseSettings, KafkaSettings

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Notifier:
    url: str
    key: str


@pytest.fixture(scope="module")
def notifier(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Notifier]:
    database = DatabaseSettings(database_url=servers.create_database(unique("openapi_n")))
    upgrade_head(database)
    _, key = create_key_sync(database, name="schemathesis", roles={"read", "operate"}, sources=[])
    topics = isolated_topics(partitions=1)
    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=servers.bootstrap_servers), topics))
    logs = Path(tmp_path_factory.mktemp("openapi-notifier"))
    env = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "NOTIFIER_GROUP_ID": unique("notifier"),
        "NOTIFIER_EVENTS_GROUP_ID": unique("notifier_events"),
        "NOTIFIER_PLAYBOOKS_FILE": str(write_playbook(logs / "care.yaml", playbook_text())),
        "LOG_LEVEL": "WARNING",
        **topics.as_env(),
    }
    service = ServiceProcess("notifier", env, logs)
    service.start()
    try:
        yield Notifier(service.url, key)
    finally:
        service.stop()


def test_the_action_routes_honour_the_notifiers_openapi_document(notifier: Notifier) -> None:
    schema = schemathesis.openapi.from_url(f"{notifier.url}/openapi.json")
    headers = {"Authorization": f"Bearer {notifier.key}"}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if "/v1/actions" not in operation.label:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
            # Generated action ids name no action (404) and a generated cursor is no page's:
            # documented 4xx answers to schema-valid input, so that check is left out.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
        tested.append(operation.label)
    assert {
        "GET /v1/actions",
        "POST /v1/actions/{action_id}/reassign",
        "POST /v1/actions/{action_id}/cancel",
    } <= set(tested)
