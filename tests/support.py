"""Helpers shared by integration and end-to-end tests: real servers, isolated names, processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer, TopicPartition

from tierflow_common.contract import decode_record
from tierflow_common.embedded import free_port
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.kafka import make_consumer, make_producer
from tierflow_common.settings import KafkaSettings, TopicSettings

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Servers:
    postgres_admin_url: str
    bootstrap_servers: str
    create_database: Any  # Callable[[str], str]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def isolated_topics(partitions: int = 3) -> TopicSettings:
    """Topic names no other test uses, so tests cannot see each other's records."""
    tag = uuid.uuid4().hex[:8]
    return TopicSettings(
        customer_events=f"customer-events-{tag}",
        classification_changed=f"customer-classification-changed-{tag}",
        tier_changed=f"customer-tier-changed-{tag}",
        care_actions=f"care-actions-{tag}",
        classifier_dlq=f"customer-events.classifier.dlq-{tag}",
        notifier_dlq=f"customer-classification-changed.notifier.dlq-{tag}",
        partitions=partitions,
    )


def plain_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    """The factory's producer with aiokafka's own batching (no linger, 16 KiB batches), as the
    tests that write their input were written against: Tansu answers ListOffsets with the start
    of a partition's last batch, so larger batches would move the "end" such tests wait for."""
    return make_producer(kafka, linger_ms=0, max_batch_size=16 * 1024)


async def read_topic(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Read a topic from the beginning until `expect` records arrived (or the timeout)."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout
        while not partitions and time.monotonic() < deadline:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    out.append(
                        {
                            "key": r.key,
                            "headers": {k: bytes(v) for k, v in r.headers},
                            "value": r.value,
                            "event": decode_record(r.key, r.value, r.headers)
                            if any(k == "ce_specversion" for k, _ in r.headers)
                            else None,
                        }
                    )
        return out
    finally:
        await consumer.stop()


async def raw_records(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic` up to its end offsets as of the call (no waiting for more), as
    aiokafka gives them."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            assert time.monotonic() < deadline, f"no partitions for {topic}"
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout}s"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def read_to_end(
    kafka: KafkaSettings, topic: str, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """`raw_records` with the CloudEvent attributes from the `ce_*` headers (`id`, `source`,
    `subject`, ...), `key` and `value`."""
    out: list[dict[str, Any]] = []
    for r in await raw_records(kafka, topic, timeout):
        attrs = {
            k.removeprefix("ce_"): bytes(v).decode() for k, v in r.headers if k.startswith("ce_")
        }
        out.append({**attrs, "key": r.key, "value": r.value})
    return out


class ServiceProcess:
    """One tierflow service as a real OS process, as `make run` starts it (`module`: another
    server that listens on `<NAME>_PORT` and answers `/readyz`, as tests/busy_server.py)."""

    def __init__(
        self, name: str, env: Mapping[str, str], log_dir: Path, *, module: str | None = None
    ) -> None:
        self.name = name
        self.module = module or f"tierflow_{name}"
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            f"{name.upper()}_PORT": str(self.port),
            "LOG_LEVEL": "INFO",
        }
        self.log_file = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        self.proc = spawn(
            [sys.executable, "-m", self.module],
            log_file=self.log_file,
            env=self.env,
            cwd=ROOT,
        )
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{tail(self.log_file, 60)}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{tail(self.log_file, 60)}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        code = stop_process(self.proc, signal.SIGTERM, 30)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")
