"""The classifier's children (simulations, churn fits) run under their own names, so `ps` and
the bench can tell a simulation's memory from a churn fit's."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from tierflow_classifier.adapters.child_process import os_name, run_named


def report_own_name(request: Any, messages: Any) -> None:
    messages.put(Path("/proc/self/comm").read_text().strip())


def test_a_child_shows_its_own_name_to_the_operating_system() -> None:
    # run_child starts children from its fork server with run_named as their target; a plain
    # fork runs the same target without the fork server's start-up.
    context = multiprocessing.get_context("fork")
    for name, shown in [
        ("tierflow-simulation", "tf-simulation"),
        ("tierflow-churn-fit", "tf-churn-fit"),
    ]:
        messages = context.Queue()
        child = context.Process(target=run_named, args=(name, report_own_name, None, messages))
        child.start()
        assert messages.get(timeout=30) == shown == os_name(name)
        child.join(10)


def test_names_fit_the_kernels_fifteen_bytes() -> None:
    assert os_name("tierflow-a-very-long-child-name") == "tf-a-very-long-"
