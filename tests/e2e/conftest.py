"""The three services as real processes on a fresh database and fresh topics."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.access import api_key_sync, bearer
from tests.support import ROOT, Servers, ServiceProcess, isolated_topics, unique
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings


@dataclass
class Pipeline:
    env: dict[str, str]
    topics: TopicSettings
    kafka: KafkaSettings
    database: DatabaseSettings
    ingest: ServiceProcess
    classifier: ServiceProcess
    notifier: ServiceProcess
    key: str = ""  # every role, any source

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.key)


@pytest.fixture
def pipeline(servers: Servers, log_dir: Path) -> Iterator[Pipeline]:
    with running_pipeline(servers, log_dir) as running:
        yield running


@contextmanager
def running_pipeline(
    servers: Servers, log_dir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Pipeline]:
    """The three services on a fresh database and fresh topics, stopped afterwards."""
    import asyncio  # noqa: PLC0415

    database = DatabaseSettings(database_url=servers.create_database(unique("e2e")))
    upgrade_head(database)
    key = api_key_sync(database, name="e2e")
    kafka = KafkaSettings(bootstrap_servers=servers.bootstrap_servers)
    topics = isolated_topics(partitions=6)
    asyncio.run(ensure_topics(kafka, topics))
    env = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        "CLASSIFIER_RULES_FILE": str(ROOT / "config" / "classifier.yaml"),
        "NOTIFIER_PLAYBOOKS_FILE": str(ROOT / "config" / "notifier.yaml"),
        "CLASSIFIER_GROUP_ID": unique("classifier"),
        "NOTIFIER_GROUP_ID": unique("notifier"),
        **topics.as_env(),
        **(extra_env or {}),
    }
    services = {n: ServiceProcess(n, env, log_dir) for n in ("ingest", "classifier", "notifier")}
    try:
        for svc in services.values():
            svc.start(wait_ready=False)
        for svc in services.values():
            svc.wait_ready()
        yield Pipeline(env, topics, kafka, database, **services, key=key)
    finally:
        for svc in services.values():
            svc.stop()
