"""The CloudEvents JavaScript SDK as a decoder for tests: what a Node.js consumer or webhook
receiver written with it makes of tierflow's records and requests.

npm's `cloudevents`, pinned by tests/js/package-lock.json, is installed there (`npm ci`, when
the lock is newer than the install) by `js_decoder`; node and npm must be on the PATH.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.npm import installed_node

JS_DIR = Path(__file__).resolve().parent / "js"


@dataclass(frozen=True)
class Message:
    """An HTTP request or a Kafka record as a binding sees it."""

    binding: str  # "http" | "kafka"
    headers: Mapping[str, str]
    body: str
    key: str | None = None


@dataclass(frozen=True)
class Decoded:
    ok: bool
    event: dict[str, Any]
    error: str


def install() -> tuple[str, Path]:
    """(node, the decoder script), the SDK installed from the lock file."""
    node = installed_node(JS_DIR, "the CloudEvents JavaScript SDK")
    return node, JS_DIR / "decode.mjs"


def decode(node: str, script: Path, messages: Sequence[Message]) -> list[Decoded]:
    """Each message as the SDK reads it, in order (one node process for all)."""
    payload = [
        {"binding": m.binding, "headers": dict(m.headers), "body": m.body, "key": m.key}
        for m in messages
    ]
    done = subprocess.run(
        [node, str(script)],
        input=json.dumps(payload),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [
        Decoded(bool(d["ok"]), d.get("event") or {}, d.get("error") or "")
        for d in json.loads(done.stdout)
    ]


def kafka_message(record: Mapping[str, Any]) -> Message:
    """A record as `tests.support.read_topic` gives it (headers as bytes)."""
    return Message(
        "kafka",
        {k: bytes(v).decode() for k, v in record["headers"].items()},
        bytes(record["value"]).decode(),
        bytes(record["key"]).decode() if record["key"] is not None else None,
    )
