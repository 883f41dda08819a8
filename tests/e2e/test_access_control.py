"""Access control on the real services (processes, as `make run` starts them): anonymous calls
to data endpoints get 401, a `read` key cannot complete a care action (403), an `operate` key
can and the call is in the audit log the classifier serves; probes stay open, `/metrics`
answers per METRICS_ACCESS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.access import api_key_sync, bearer
from tests.e2e.conftest import Pipeline
from tests.support import ServiceProcess
from tierflow_common.auth import Role

pytestmark = pytest.mark.e2e


def key_id(key: str) -> str:
    return key.split("_")[1]  # tf_<key id>_<secret>


def poll(call: Any, done: Any, *, timeout: float = 15.0, what: str = "answer") -> httpx.Response:
    """`call()` until `done(response)`: a key made while a service runs takes effect within
    its keys refresh (2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        resp: httpx.Response = call()
        if done(resp) or time.monotonic() > deadline:
            assert done(resp), f"{what}: last {resp.status_code} {resp.text[:300]}"
            return resp
        time.sleep(0.1)


def test_roles_decide_who_reads_operates_and_administers(pipeline: Pipeline) -> None:
    read = api_key_sync(pipeline.database, {Role.READ}, name="dashboard")
    operate = api_key_sync(pipeline.database, {Role.OPERATE}, name="care agent")
    classifier, notifier = pipeline.classifier.url, pipeline.notifier.url

    # Anonymous: every data endpoint of the classifier and the notifier is closed.
    for url in (
        f"{classifier}/v1/customers/c-1",
        f"{classifier}/v1/stats/distribution",
        f"{classifier}/v1/segments/value_tier/regular",
        f"{notifier}/v1/actions",
        f"{notifier}/v1/deliveries",
    ):
        resp = httpx.get(url)
        assert resp.status_code == 401, url
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["required_role"] == "read"
    assert httpx.post(f"{classifier}/v1/models/churn:fit").json()["required_role"] == "admin"
    for svc in (pipeline.ingest, pipeline.classifier, pipeline.notifier):
        assert httpx.get(f"{svc.url}/livez").status_code == 200
        assert httpx.get(f"{svc.url}/readyz").status_code == 200
        # METRICS_ACCESS=loopback (the default): open to this machine.
        assert httpx.get(f"{svc.url}/metrics").status_code == 200

    # A first purchase makes an onboarding care action.
    customer = "access-1"
    event = {
        "specversion": "1.0",
        "id": "order-access-1",
        "source": "shop",
        "type": "purchase",
        "subject": customer,
        "time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "data": {"order_id": "a1", "amount": "50", "currency": "USD"},
    }
    sent = httpx.post(
        f"{pipeline.ingest.url}/v1/events",
        json=event,
        headers={"content-type": "application/cloudevents+json", **pipeline.auth},
    )
    assert sent.status_code == 202, sent.text
    listed = poll(
        lambda: httpx.get(
            f"{notifier}/v1/actions", params={"customer": customer}, headers=bearer(read)
        ),
        lambda r: r.status_code == 200 and r.json()["items"],
        what="the read key lists the customer's care action",
    )
    action = listed.json()["items"][0]["action_id"]
    complete = f"{notifier}/v1/actions/{action}/complete"

    denied = httpx.post(complete, json={"outcome": "done"}, headers=bearer(read))
    assert denied.status_code == 403
    assert denied.json()["required_role"] == "operate"
    assert key_id(read) in denied.json()["detail"]
    still = httpx.get(f"{notifier}/v1/actions/{action}", headers=bearer(read)).json()
    assert still["status"] == "open"

    done = poll(
        lambda: httpx.post(complete, json={"outcome": "done"}, headers=bearer(operate)),
        lambda r: r.status_code != 401,
        what="the operate key completes the action",
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "done"
    # An operate key reads nothing: roles are independent.
    assert httpx.get(f"{notifier}/v1/actions", headers=bearer(operate)).status_code == 403

    # The audit log (one table for all services, served by the classifier, admin only).
    # A new key is known to each service within one key refresh: until the classifier's
    # next one, the read key is unknown there (401), then it lacks the role (403).
    refused_audit = poll(
        lambda: httpx.get(f"{classifier}/v1/audit", headers=bearer(read)),
        lambda r: r.status_code != 401,
        what="the classifier knows the read key",
    )
    assert refused_audit.status_code == 403
    audit = httpx.get(
        f"{classifier}/v1/audit", params={"key": key_id(operate)}, headers=pipeline.auth
    )
    assert audit.status_code == 200, audit.text
    rows = audit.json()["items"]
    completed = [r for r in rows if r["route"] == "/v1/actions/{action_id}/complete"]
    assert [(r["service"], r["method"], r["target"], r["status"]) for r in completed] == [
        ("notifier", "POST", {"action_id": action}, 200)
    ]
    assert completed[0]["key_name"] == "care agent"
    assert completed[0]["role"] == "operate"
    refused = httpx.get(
        f"{classifier}/v1/audit", params={"key": key_id(read)}, headers=pipeline.auth
    ).json()["items"]
    assert [(r["route"], r["target"], r["status"]) for r in refused] == [
        ("/v1/audit", {}, 403),  # newest first
        ("/v1/actions/{action_id}/complete", {"action_id": action}, 403),
    ]
    # The audit read itself is an admin call: audited too.
    mine = httpx.get(
        f"{classifier}/v1/audit", params={"key": key_id(pipeline.key)}, headers=pipeline.auth
    ).json()["items"]
    assert any(r["route"] == "/v1/audit" and r["status"] == 200 for r in mine)

    # `tierflow audit` reads the same rows from the database.
    printed = subprocess.run(
        [sys.executable, "-m", "tierflow_common.cli", "audit", "--key", key_id(operate)],
        env={**os.environ, "DATABASE_URL": pipeline.env["DATABASE_URL"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "POST /v1/actions/{action_id}/complete" in printed
    assert f"action_id={action}" in printed
    assert "care agent" in printed


def test_metrics_behind_a_key_when_configured(pipeline: Pipeline, log_dir: Path) -> None:
    read = api_key_sync(pipeline.database, {Role.READ}, name="prometheus")
    ingest = api_key_sync(pipeline.database, {Role.INGEST}, name="shop")
    svc = ServiceProcess("ingest", {**pipeline.env, "METRICS_ACCESS": "key"}, log_dir)
    svc.start()
    try:
        anonymous = httpx.get(f"{svc.url}/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["required_role"] == "read"
        assert httpx.get(f"{svc.url}/metrics", headers=bearer(ingest)).status_code == 403
        scraped = httpx.get(f"{svc.url}/metrics", headers=bearer(read))
        assert scraped.status_code == 200
        assert "tierflow_ingest" in scraped.text
        assert httpx.get(f"{svc.url}/livez").status_code == 200
    finally:
        svc.stop()
