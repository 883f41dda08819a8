"""The CDNOW replay script, on the first 300 customers of the log: every check must pass.

The script starts its own servers and services (like `make run`), so this also covers the
whole path from a real transaction log through the ingest to the classifier's state and topic.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "replay_cdnow.py"


def load_script() -> ModuleType:
    # scripts/ is not a package; register the module so its dataclasses can resolve it.
    spec = importlib.util.spec_from_file_location("replay_cdnow", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_replay_of_300_customers_passes_every_check(tmp_path: Path) -> None:
    report = tmp_path / "cdnow-replay.md"

    code = load_script().main(["--limit", "300", "--report", str(report), "--timeout", "120"])

    text = report.read_text()
    assert code == 0, text
    assert "## Verification: PASS" in text
    assert "by 300 customers" in text
    # RFM and ABC are relative to the population: at the end every customer is scored against
    # the population as of the final watermark, none is left `unscored`.
    assert "| RFM and ABC scored against the final population, for every customer | pass |" in text
    assert "unscored: abc 0, rfm 0; 0 labels differ" in text
    assert "| abc | unscored |" not in text
    assert "| rfm | unscored |" not in text
    assert "| abc | A |" in text
    assert "| rfm | champions |" in text
