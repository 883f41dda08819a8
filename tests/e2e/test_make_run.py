"""`tierflow run` (what `make run` calls) as a newcomer uses it: it comes up, serves, stops on
SIGTERM leaving no process behind, and a second run keeps the data of the first even though the
in-memory broker lost its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import ROOT
from tierflow_common.embedded import free_port

pytestmark = pytest.mark.e2e


class Run:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tierflow_common.cli", "run"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log.read_text(errors="replace")):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not printed:\n{self.log.read_text(errors='replace')}")

    def descendants(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        return children

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)


def purchase(event_id: str) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "shop",
        "type": "purchase",
        "subject": "runner-1",
        "time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "data": {"order_id": event_id, "amount": "10", "currency": "USD"},
    }


def wait_purchases(url: str, count: int, key: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        resp = httpx.get(url, timeout=5, headers={"authorization": f"Bearer {key}"})
        if resp.status_code == 200:
            body = resp.json()
            if body["features"]["purchases_lifetime"] == count:  # type: ignore[index]
                return body
        time.sleep(0.1)
    raise AssertionError(f"expected {count} purchases, last: {body}")


def tierflow(env: dict[str, str], *args: str) -> str:
    """A `tierflow` command against the running stack (its database, found by the port)."""
    done = subprocess.run(
        [sys.executable, "-m", "tierflow_common.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def check_access(env: dict[str, str], ports: dict[str, int], dev_key: str) -> None:
    """Anonymous calls to the data endpoints get 401; the development key has every role; a
    `read` key (made with the CLI) cannot complete a care action; the notifier's own key sends
    for its source only."""
    classifier = f"http://127.0.0.1:{ports['classifier']}"
    notifier = f"http://127.0.0.1:{ports['notifier']}"
    dev = {"authorization": f"Bearer {dev_key}"}
    for url in (f"{classifier}/v1/customers/runner-1", f"{notifier}/v1/actions"):
        assert httpx.get(url, timeout=5).status_code == 401, url
        assert httpx.get(url, timeout=5, headers=dev).status_code == 200, url
    created = tierflow(env, "keys", "create", "--name", "dashboard", "--role", "read")
    read_key = re.search(r"key: (tf_\S+)", created)
    assert read_key is not None, created
    complete = f"{notifier}/v1/actions/some-action/complete"
    deadline = time.monotonic() + 15
    status = 0
    while time.monotonic() < deadline:  # the key takes effect within the keys refresh
        status = httpx.post(
            complete,
            json={"outcome": "done"},
            headers={"authorization": f"Bearer {read_key[1]}"},
            timeout=5,
        ).status_code
        if status != 401:
            break
        time.sleep(0.1)
    assert status == 403
    listing = tierflow(env, "keys", "list")
    rows = {line.split()[0]: line for line in listing.splitlines() if line.strip()}
    notifier_key = (Path(env["TIERFLOW_VAR_DIR"]) / "notifier-api-key").read_text().split("_")[1]
    assert re.search(r"\bingest\b", rows[notifier_key])
    assert "tierflow/notifier" in rows[notifier_key]
    assert not re.search(r"\b(read|operate|admin)\b", rows[notifier_key])
    dev_row = rows[dev_key.split("_")[1]]
    assert all(role in dev_row for role in ("ingest", "read", "operate", "admin"))


def test_run_serves_stops_cleanly_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    ports = {
        name: free_port() for name in ("ingest", "classifier", "notifier", "console", "pg", "kafka")
    }
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    env.update(
        {
            "TIERFLOW_VAR_DIR": str(tmp_path / "var"),
            "TIERFLOW_EMBEDDED_POSTGRES_PORT": str(ports["pg"]),
            "TIERFLOW_EMBEDDED_KAFKA_PORT": str(ports["kafka"]),
            "INGEST_PORT": str(ports["ingest"]),
            "CLASSIFIER_PORT": str(ports["classifier"]),
            "NOTIFIER_PORT": str(ports["notifier"]),
            "CONSOLE_PORT": str(ports["console"]),
        }
    )
    ingest = f"http://127.0.0.1:{ports['ingest']}/v1/events"
    customer = f"http://127.0.0.1:{ports['classifier']}/v1/customers/runner-1"
    headers = {"content-type": "application/cloudevents+json"}

    first = Run(env, tmp_path / "run1.log")
    try:
        first.wait_for("pipeline up")
        key = (tmp_path / "var" / "dev-api-key").read_text().strip()
        assert key in first.log.read_text()  # printed for the quick start
        headers["authorization"] = f"Bearer {key}"
        children = first.descendants()
        assert len(children) >= 6  # postgres (+ its workers), tansu, three services, console
        console = f"http://127.0.0.1:{ports['console']}"
        assert f"Console: {console}" in first.log.read_text()
        as_browser = {"accept": "text/html"}
        sign_in = httpx.get(console + "/", headers=as_browser, follow_redirects=True, timeout=5)
        assert "Sign in to the tierflow console" in sign_in.text
        overview = httpx.get(console + "/", headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert overview.status_code == 200
        assert "classifier" in overview.text
        assert httpx.post(ingest, json=purchase("r-1"), headers=headers).status_code == 202
        wait_purchases(customer, 1, key)
        check_access(env, ports, key)
    finally:
        code = first.terminate()
    assert code == 0
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], f"left behind: {[p.pid for p in alive]}"
    assert "all stopped" in first.log.read_text()

    second = Run(env, tmp_path / "run2.log")
    try:
        second.wait_for("pipeline up")
        # The development key survives restarts, like the data.
        assert (tmp_path / "var" / "dev-api-key").read_text().strip() == key
        # PostgreSQL kept the customer; the broker started empty, yet new events still apply.
        wait_purchases(customer, 1, key)
        assert httpx.post(ingest, json=purchase("r-2"), headers=headers).status_code == 202
        body = wait_purchases(customer, 2, key)
        assert body["features"]["net_spend_lifetime"] == "20"  # type: ignore[index]
    finally:
        assert second.terminate() == 0
