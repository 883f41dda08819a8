"""deploy/k8s: the production overlay, rendered by `kubectl kustomize` (kustomize built into
kubectl, offline), validated with kubernetes-validate's schemas (strict: unknown fields are
errors) and, for Strimzi's KafkaTopic, with Strimzi's own CRD schema (vendored under
tests/deploy/strimzi); then checked against what the code expects."""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft4Validator  # type: ignore[import-untyped]

from tests.unit.test_deploy_compose import FILE_VARIABLES, SERVICES
from tests.unit.test_readme import documented
from tierflow_common.settings import TopicSettings

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "production"
KAFKA_TOPIC_CRD = ROOT / "tests" / "deploy" / "strimzi" / "043-Crd-kafkatopic.yaml"
KUBERNETES_VERSION = "1.33.0"
# Secrets the cluster provides (Strimzi's operators, the operator of the database): the
# manifests refer to them, nothing here makes them.
EXTERNAL_SECRETS = {"tierflow", "tierflow-cluster-ca-cert", "tierflow-db-ca"}
SECRET_VARIABLES = {"DATABASE_URL", "KAFKA_SASL_PASSWORD", "NOTIFIER_INGEST_API_KEY"}


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (its built-in kustomize) renders the manifests"
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in rendered() if d["kind"] == kind]


def strict(schema: Any) -> Any:
    """The CRD schema as the API server prunes: an object's unknown fields are errors unless it
    preserves them (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def kafka_topic_crd() -> tuple[str, Draft4Validator]:
    """(apiVersion, a validator of its schema) of the version Strimzi serves and stores."""
    crd = yaml.safe_load(KAFKA_TOPIC_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    assert crd["spec"]["names"]["kind"] == "KafkaTopic"
    validator = Draft4Validator(strict(version["schema"]["openAPIV3Schema"]))
    return f"{crd['spec']['group']}/{version['name']}", validator


def test_every_rendered_resource_is_valid_for_kubernetes() -> None:
    kinds = {d["kind"] for d in rendered()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job", "KafkaTopic"} <= kinds
    for doc in rendered():
        if doc["kind"] == "KafkaTopic":
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_misspelled_probe() -> None:
    deployment = copy.deepcopy(of_kind("Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_topic_is_a_strimzi_kafka_topic_replicated_three_times_two_in_sync() -> None:
    topics = TopicSettings.model_construct()
    config = of_kind("ConfigMap")[0]["data"]
    api_version, validator = kafka_topic_crd()
    resources = of_kind("KafkaTopic")
    for resource in resources:
        assert resource["apiVersion"] == api_version
        errors = [e.message for e in validator.iter_errors(resource)]
        assert errors == [], resource["metadata"]["name"]
        spec = resource["spec"]
        assert spec["replicas"] == 3
        assert spec["config"]["min.insync.replicas"] == "2"
        assert spec["partitions"] == int(config["TOPIC_PARTITIONS"])
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "tierflow"
    assert sorted(r["spec"]["topicName"] for r in resources) == sorted(topics.all_topics())
    assert config["TOPIC_REPLICATION_FACTOR"] == "3"


def test_the_crd_schema_refuses_what_strimzi_would() -> None:
    resource = copy.deepcopy(of_kind("KafkaTopic")[0])
    resource["spec"]["partitions"] = 0
    resource["spec"]["replica"] = 3
    messages = [e.message for e in kafka_topic_crd()[1].iter_errors(resource)]
    assert any("minimum" in m or "less than" in m for m in messages), messages
    assert any("replica" in m for m in messages), messages


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (d, c)
        for d in of_kind("Deployment") + of_kind("Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_each_service_is_probed_where_it_listens_and_requests_resources() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    assert set(deployments) == set(SERVICES)
    for name, port in SERVICES.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [name]
        (http,) = container["ports"]
        assert http["containerPort"] == port
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": http["name"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": http["name"]}
        assert pod["securityContext"]["runAsNonRoot"] is True
        (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == name]
        assert service["spec"]["ports"][0]["port"] == port
    for _, container in containers():
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), container["name"]
        assert container["image"] == "registry.example.com/tierflow:0.1.0"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_consumers_do_not_outnumber_the_partitions_even_during_a_rolling_update() -> None:
    """A consumer replica without a partition is never ready, and a rolling update waits for
    its surge replica to be ready: replicas + surge must not exceed the partitions."""
    partitions = int(of_kind("ConfigMap")[0]["data"]["TOPIC_PARTITIONS"])
    for deployment in of_kind("Deployment"):
        if deployment["metadata"]["name"] in ("classifier", "notifier"):
            spec = deployment["spec"]
            surge = spec["strategy"]["rollingUpdate"]["maxSurge"]
            assert spec["replicas"] >= 2
            assert spec["replicas"] + surge <= partitions


def test_secrets_come_from_secrets_and_every_variable_is_a_documented_setting() -> None:
    table = documented()
    (config,) = of_kind("ConfigMap")
    assert not set(config["data"]) & (SECRET_VARIABLES | {"NOTIFIER_WEBHOOKS"})
    for variable in config["data"]:
        assert variable in table, variable
    made = {s["metadata"]["name"] for s in of_kind("Secret")}
    for workload, container in containers():
        env = {e["name"]: e for e in container.get("env", [])}
        for variable, entry in env.items():
            assert variable in table or variable in FILE_VARIABLES, variable
            if variable in SECRET_VARIABLES | {"NOTIFIER_WEBHOOKS"}:
                secret = entry["valueFrom"]["secretKeyRef"]["name"]
                assert secret in made | EXTERNAL_SECRETS, (workload["metadata"]["name"], secret)
        assert "DATABASE_URL" in env
        volumes = workload["spec"]["template"]["spec"].get("volumes", [])
        for volume in volumes:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in made | EXTERNAL_SECRETS
    notifier = next(c for d, c in containers() if d["metadata"]["name"] == "notifier")
    assert "NOTIFIER_INGEST_API_KEY" in {e["name"] for e in notifier["env"]}
