"""Every route of every service's real application asks for a role (or is one of the open
probes): read from the apps' OpenAPI documents, which is also what API users see."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from tests.support import ROOT
from tierflow_classifier.bootstrap import create_app as classifier_app
from tierflow_classifier.settings import ClassifierSettings
from tierflow_ingest.bootstrap import create_app as ingest_app
from tierflow_notifier.bootstrap import create_app as notifier_app
from tierflow_notifier.settings import NotifierSettings

OPEN = {"/livez", "/readyz", "/metrics"}  # /metrics: METRICS_ACCESS, see test_auth
# Routes whose role is fixed by the issue (others: GET -> read is checked below).
EXPECTED = {
    ("ingest", "post", "/v1/events"): "ingest",
    ("ingest", "post", "/v1/events:batch"): "ingest",
    ("ingest", "post", "/v1/events:bulk"): "ingest",
    ("ingest", "get", "/v1/schemas/customer-event"): "ingest",
    ("classifier", "post", "/v1/models/churn:fit"): "admin",
    ("classifier", "get", "/v1/audit"): "admin",
    ("notifier", "post", "/v1/actions/{action_id}/ack"): "operate",
    ("notifier", "post", "/v1/actions/{action_id}/complete"): "operate",
    ("notifier", "post", "/v1/actions/{action_id}/reassign"): "operate",
    ("notifier", "post", "/v1/actions/{action_id}/cancel"): "operate",
    ("notifier", "post", "/v1/deliveries/{delivery_id}/retry"): "operate",
    ("notifier", "post", "/v1/deliveries:retry-dead"): "operate",
}


def apps() -> dict[str, FastAPI]:
    return {
        "ingest": ingest_app(),
        "classifier": classifier_app(
            settings=ClassifierSettings(rules_file=ROOT / "config" / "classifier.yaml")
        ),
        "notifier": notifier_app(
            settings=NotifierSettings(playbooks_file=ROOT / "config" / "notifier.yaml")
        ),
    }


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    document = app.openapi()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths: dict[str, dict[str, Any]] = document["paths"]
    return [(path, method, op) for path, ops in paths.items() for method, op in ops.items()]


@pytest.fixture(scope="module")
def documents() -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    return {name: operations(app) for name, app in apps().items()}


def test_every_route_but_the_probes_needs_a_role(
    documents: dict[str, list[tuple[str, str, dict[str, Any]]]],
) -> None:
    for service, ops in documents.items():
        for path, method, op in ops:
            if path in OPEN:
                if path == "/metrics":  # by default: no key from loopback, else a read key
                    assert op["security"] == [{"HTTPBearer": ["read"]}, {}]
                else:
                    assert "security" not in op, (service, path)
                continue
            security = op.get("security")
            assert security, f"{service} {method.upper()} {path} answers anyone"
            ((scheme, roles),) = security[0].items()
            assert scheme == "HTTPBearer"
            assert len(roles) == 1
            want = EXPECTED.get((service, method, path))
            if want is not None:
                assert roles == [want], (service, method, path)
            elif method == "get":
                assert roles == ["read"], (service, path)


def test_the_fixed_routes_exist(
    documents: dict[str, list[tuple[str, str, dict[str, Any]]]],
) -> None:
    seen = {(s, m, p) for s, ops in documents.items() for p, m, _ in ops}
    assert set(EXPECTED) <= seen
