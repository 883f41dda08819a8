"""`tierflow run --classifiers N --notifiers M`: which processes it starts, on which ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierflow_common.devstack import DevStack

HOSTS = {
    "ingest": ("127.0.0.1", 8080),
    "classifier": ("127.0.0.1", 8081),
    "notifier": ("127.0.0.1", 8082),
}


def test_one_of_each_by_default_as_make_run_starts_them(tmp_path: Path) -> None:
    planned = DevStack(env={}, cwd=tmp_path).plan(HOSTS)
    assert [(s.name, s.module, s.url, s.env) for s in planned] == [
        ("ingest", "ingest", "http://127.0.0.1:8080", {}),
        ("classifier", "classifier", "http://127.0.0.1:8081", {}),
        ("notifier", "notifier", "http://127.0.0.1:8082", {}),
    ]


def test_extra_processes_get_their_own_port_and_log(tmp_path: Path) -> None:
    planned = DevStack(env={}, cwd=tmp_path, classifiers=3, notifiers=2).plan(HOSTS)
    by_name = {s.name: s for s in planned}
    assert list(by_name) == [
        "ingest",
        "classifier",
        "classifier-2",
        "classifier-3",
        "notifier",
        "notifier-2",
    ]
    assert by_name["classifier-2"].url == "http://127.0.0.1:8091"
    assert by_name["classifier-2"].env == {"CLASSIFIER_PORT": "8091"}
    assert by_name["classifier-3"].env == {"CLASSIFIER_PORT": "8101"}
    assert by_name["notifier-2"].env == {"NOTIFIER_PORT": "8092"}
    assert by_name["classifier-3"].module == "classifier"
    assert by_name["notifier-2"].log_file.name == "notifier-2.log"
    assert len({s.url for s in planned}) == len(planned)


def test_ports_that_would_clash_are_refused(tmp_path: Path) -> None:
    hosts = {**HOSTS, "notifier": ("127.0.0.1", 8091)}
    with pytest.raises(ValueError, match="8091"):
        DevStack(env={}, cwd=tmp_path, classifiers=2).plan(hosts)
    with pytest.raises(ValueError, match="at least one"):
        DevStack(env={}, cwd=tmp_path, classifiers=0)
