"""deploy/: the image, the compose file, Prometheus and Grafana, checked offline.

No Docker engine runs here. The compose file is validated by check-jsonschema with the
compose-spec schema it ships; the Dockerfile (no hadolint on this machine) by parsing it for
the properties that matter; the entry script by running it; the dashboard's metrics against
the metrics the code registers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.unit.test_readme import documented
from tierflow_common.settings import (
    ClassifierHttpSettings,
    ConsoleHttpSettings,
    IngestHttpSettings,
    NotifierHttpSettings,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
SERVICES = {
    "ingest": IngestHttpSettings.model_fields["port"].default,
    "classifier": ClassifierHttpSettings.model_fields["port"].default,
    "notifier": NotifierHttpSettings.model_fields["port"].default,
    "console": ConsoleHttpSettings.model_fields["port"].default,
}
# Read by deploy/entrypoint.sh (VAR_FILE=path sets VAR), not by the settings classes.
FILE_VARIABLES = {
    f"{v}_FILE"
    for v in (
        "DATABASE_URL",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_KEY_PASSWORD",
        "NOTIFIER_INGEST_API_KEY",
        "NOTIFIER_WEBHOOKS",
    )
}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile: comments dropped, continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def workspace_members() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members: list[str] = pyproject["tool"]["uv"]["workspace"]["members"]
    return members


def test_the_image_is_built_in_stages_from_the_lockfile_and_runs_unprivileged() -> None:
    built = stages()
    assert len(built) >= 3, "uv, build and runtime stages"
    run_lines = [args for stage in built for word, args in stage if word == "RUN"]
    syncs = [line for line in run_lines if "uv sync" in line]
    assert syncs, "the environment is made by uv sync"
    assert all("--frozen" in line and "--no-dev" in line for line in syncs), syncs
    copies = [args for stage in built for word, args in stage if word == "COPY"]
    assert any("uv.lock" in c for c in copies)
    for member in workspace_members():
        assert any(f"{member}/pyproject.toml" in c for c in copies), member
    runtime = built[-1]
    users = [args for word, args in runtime if word == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(
        "--from=build" in args and "/app/.venv" in args for w, args in runtime if w == "COPY"
    )
    assert not any("uv" in args.split() for w, args in runtime if w == "RUN"), "no uv at run time"


def test_the_image_uses_the_makefiles_uv_and_a_python_the_project_supports() -> None:
    args = dict(arg.split("=", 1) for word, arg in dockerfile() if word == "ARG" and "=" in arg)
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)", makefile, re.M)
    assert uv_version
    assert args["UV_IMAGE"].endswith(f":{uv_version.group(1)}")
    python = re.search(r"python:(\d+)\.(\d+)", args["PYTHON_IMAGE"])
    assert python
    assert (3, 11) <= (int(python.group(1)), int(python.group(2))) < (3, 14)


def test_every_service_listens_on_all_interfaces_in_the_image() -> None:
    env = " ".join(args for word, args in stages()[-1] if word == "ENV")
    for service in SERVICES:
        assert f"{service.upper()}_HOST=0.0.0.0" in env, service


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for path in (".venv", ".git", "var", "**/node_modules"):
        assert path in ignored


def entry(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), *args],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_entry_selects_each_service_and_each_is_a_runnable_module() -> None:
    script = (DEPLOY / "entrypoint.sh").read_text()
    case = re.search(r"^\s*([a-z |]+)\)\n\s*shift\n\s*exec python -m", script, re.M)
    assert case
    selectable = {name.strip() for name in case.group(1).split("|")}
    assert selectable == set(SERVICES)
    for service in selectable:
        assert importlib.util.find_spec(f"tierflow_{service}.__main__"), service
    assert entry("migrate", "--help").returncode == 0
    assert entry("topics", "--help").returncode == 0


def test_a_secret_file_becomes_its_variable(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("tf_key_123")
    shown = entry(
        "sh",
        "-c",
        'printf "%s|%s" "$NOTIFIER_INGEST_API_KEY" "${NOTIFIER_INGEST_API_KEY_FILE-}"',
        NOTIFIER_INGEST_API_KEY_FILE=str(secret),
    )
    assert shown.stdout == "tf_key_123|"
    missing = entry("true", DATABASE_URL_FILE=str(tmp_path / "absent"))
    assert missing.returncode == 2
    assert "DATABASE_URL_FILE" in missing.stderr
    # A setting that names a file on purpose is left alone.
    kept = entry("sh", "-c", 'printf %s "$CLASSIFIER_RULES_FILE"', CLASSIFIER_RULES_FILE="x.yaml")
    assert kept.stdout == "x.yaml"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_compose_file_is_valid_compose(tmp_path: Path) -> None:
    done = check_compose(DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    broken = compose()
    broken["services"]["ingest"]["ports"] = 8080
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose(path).returncode == 1


def test_kafka_runs_three_kraft_brokers_replicating_to_two_in_sync() -> None:
    services = compose()["services"]
    brokers = {
        name: s for name, s in services.items() if name.startswith("kafka-") and name[-1:].isdigit()
    }
    assert len(brokers) == 3
    assert not any("zookeeper" in name for name in services)
    ids = set()
    for name, broker in brokers.items():
        env = {k: str(v) for k, v in broker["environment"].items()}
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(v.split("@")[1].split(":")[0] for v in voters) == sorted(brokers)
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        ids.add(env["KAFKA_NODE_ID"])
    assert len(ids) == 3
    tierflow = services["init"]["environment"]
    assert str(tierflow["TOPIC_REPLICATION_FACTOR"]) == "3"
    assert sorted(tierflow["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == sorted(
        f"{name}:9092" for name in brokers
    )


def test_every_service_runs_from_the_one_image_with_documented_settings() -> None:
    services = compose()["services"]
    table = documented()
    for name, port in SERVICES.items():
        service = services[name]
        assert service["image"] == services["init"]["image"]
        assert service["command"] == [name]
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
        for variable in service["environment"]:
            assert variable in table or variable in FILE_VARIABLES, f"{name}: {variable}"
        check = service.get("healthcheck", {}).get("test", [])
        assert not check or f"127.0.0.1:{port}/readyz" in " ".join(check), name
    for name in ("classifier", "notifier"):
        replicas = services[name]["deploy"]["replicas"]
        default = re.fullmatch(r"\$\{" + name.upper() + r"_REPLICAS:-(\d+)\}", replicas)
        assert default, replicas
        assert int(default.group(1)) >= 2


def prometheus() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    return config


def test_prometheus_scrapes_every_replica_of_every_service_with_a_read_key() -> None:
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in prometheus()["scrape_configs"]}
    mounts = [v.split(":")[:2] for v in services["prometheus"]["volumes"]]
    for name, port in SERVICES.items():
        assert services[name]["environment"]["METRICS_ACCESS"] == "key"
        job = jobs[name]
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [name]
        assert sd["port"] == port
        credentials = Path(job["authorization"]["credentials_file"])
        assert ["keys", str(credentials.parent)] in mounts
    init = " ".join(services["init"]["command"])
    assert "--name prometheus --role read" in init
    assert "kafka-exporter:9308" in jobs["kafka"]["static_configs"][0]["targets"]


def code_metrics() -> set[str]:
    """Every sample name the services' Prometheus metrics can expose."""
    for module in ("tierflow_ingest", "tierflow_classifier", "tierflow_notifier"):
        importlib.import_module(f"{module}.bootstrap")
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
    }
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("tierflow_")
        for suffix in suffixes.get(family.type, ("",))
    }


# The Kafka exporter's metrics the dashboard reads (danielqsj/kafka-exporter).
EXPORTER_METRICS = {"kafka_consumergroup_lag", "kafka_topic_partition_current_offset"}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "delta", "max", "histogram_quantile", "le"}


def dashboard() -> dict[str, Any]:
    path = DEPLOY / "grafana" / "dashboards" / "tierflow-pipeline.json"
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def test_the_dashboard_reads_only_metrics_that_exist() -> None:
    known = code_metrics()
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    used = set()
    for panel in panels:
        for target in panel["targets"]:
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", target["expr"])
            used |= {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if w not in PROMQL_WORDS}
    labels = {"reason", "group", "outcome", "producer", "kind", "endpoint", "instance", "age"}
    labels |= {"consumergroup", "topic"}
    names = used - labels
    assert {n for n in names if n.startswith("tierflow_")} <= known
    assert {n for n in names if not n.startswith("tierflow_")} <= EXPORTER_METRICS
    # What the pipeline's operators look at: lag, throughput, DLQ, outbox backlog, delivery
    # failures, distribution.
    for metric in (
        "kafka_consumergroup_lag",
        "tierflow_ingest_accepted_total",
        "tierflow_consumer_records_total",
        "tierflow_dead_lettered_total",
        "tierflow_outbox_backlog",
        "tierflow_notifier_deliveries_total",
        "tierflow_consumer_assigned_partitions",
        "tierflow_consumer_batch_seconds_bucket",
    ):
        assert metric in names, metric


def test_grafana_is_provisioned_with_the_dashboard_and_its_datasource() -> None:
    grafana = DEPLOY / "grafana"
    (datasource,) = yaml.safe_load(
        (grafana / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    (provider,) = yaml.safe_load(
        (grafana / "provisioning" / "dashboards" / "tierflow.yaml").read_text()
    )["providers"]
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert datasource["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"] if p["type"] != "row"}
    assert uids == {datasource["uid"]}


@pytest.mark.parametrize("unit", sorted((DEPLOY / "systemd").glob("*.service")))
def test_the_systemd_units_are_kept(unit: Path) -> None:
    assert "ExecStart=" in unit.read_text()
