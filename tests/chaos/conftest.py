"""The fault scenarios: each has a short form (in `make test`) and a full form marked `chaos`,
run only by `make chaos` (TIERFLOW_CHAOS=1), which also writes var/chaos/<run>.json."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: the full form of a fault scenario (make chaos)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("TIERFLOW_CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="full fault scenario: run by `make chaos`")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)
