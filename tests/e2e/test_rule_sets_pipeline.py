"""The operator's what-if on the running pipeline, through the `tierflow rules` CLI: the
simulation of a candidate that lowers the VIP bar says how many customers would become VIPs
and how many account-manager assignments the notifier would create; activating it (no
restart) then publishes exactly those tier changes, and the notifier creates those actions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Pipeline
from tests.integration.helpers import eventually
from tests.support import ROOT, read_to_end

pytestmark = pytest.mark.e2e

CUSTOMERS = 40
RULES_TEXT = (ROOT / "config" / "classifier.yaml").read_text()
LOWER_VIP = RULES_TEXT.replace("vip_spend: 5000 ", "vip_spend: 2500 ").replace(
    "vip_orders: 3\n", "vip_orders: 2\n"
)


def tierflow(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    """The `tierflow` command, as an operator runs it against the running classifier."""
    env = {**os.environ, "TIERFLOW_API_KEY": pipeline.key}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow_common.cli",
            "rules",
            *args,
            "--url",
            pipeline.classifier.url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def purchases() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    out = []
    for i in range(CUSTOMERS):
        for n in range(1 + i % 3):
            out.append(
                {
                    "specversion": "1.0",
                    "id": f"r{i}-{n}",
                    "source": "shop",
                    "type": "purchase",
                    "subject": f"rs-{i:02d}",
                    # A month apart, the last one just now: no deadline falls due meanwhile.
                    "time": (now - timedelta(days=30 * (i % 3 - n), minutes=i)).isoformat(),
                    "data": {
                        "order_id": f"r{i}-{n}",
                        "amount": str(300 + 173 * i % 2_400),
                        "currency": "USD",
                    },
                }
            )
    return out


async def actions_by_rule(client: httpx.AsyncClient, url: str, triggers: set[str]) -> Counter[str]:
    """The notifier's actions triggered by one of these change ids, by playbook rule."""
    found: Counter[str] = Counter()
    after: str | None = None
    while True:
        params = {"limit": "500", **({"after": after} if after else {})}
        page = (await client.get(f"{url}/v1/actions", params=params)).json()
        found.update(a["rule_id"] for a in page["items"] if a["trigger_event_id"] in triggers)
        after = page.get("next")
        if not after:
            return found


async def activation_changes(pipeline: Pipeline, cause: str) -> dict[str, tuple[str, str, str]]:
    """change id -> (dimension, from, to) of the changes published with this cause."""
    out = {}
    for record in await read_to_end(pipeline.kafka, pipeline.topics.classification_changed):
        data = json.loads(record["value"])
        if data["cause"] == cause:
            for c in data["changes"]:
                out[c["change_id"]] = (c["dimension"], c["from"], c["to"])
    return out


async def test_simulate_then_activate_on_the_running_pipeline(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = purchases()
    async with httpx.AsyncClient(timeout=10, headers=pipeline.auth) as client:
        sent = await client.post(
            f"{pipeline.ingest.url}/v1/events:batch",
            content=json.dumps(events),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["accepted"] == len(events)
        await eventually(
            lambda: client.get(f"{pipeline.classifier.url}/v1/stats/distribution"),
            lambda r: (
                r.status_code == 200 and sum(r.json().get("value_tier", {}).values()) == CUSTOMERS
            ),
            timeout=30,
            what="every customer classified",
        )
        candidate = tmp_path / "lower-vip.yaml"
        candidate.write_text(LOWER_VIP)
        checked = tierflow(pipeline, "validate", str(candidate))
        assert checked.returncode == 0, checked.stderr
        simulated = tierflow(pipeline, "simulate", str(candidate), "--json")
        assert simulated.returncode == 0, simulated.stderr
        report = json.loads(simulated.stdout)
        assert report["customers"] == CUSTOMERS
        tiers = report["dimensions"]["value_tier"]
        new_vips = sum(
            n
            for f, row in tiers["matrix"].items()
            if f != "VIP"
            for t, n in row.items()
            if t == "VIP"
        )
        assert new_vips == tiers["changed"] > 0
        assert report["care_actions"].get("vip-account-manager") == new_vips
        shown = tierflow(pipeline, "simulate", str(candidate))  # the table an operator reads
        assert shown.returncode == 0, shown.stderr
        assert "value_tier" in shown.stdout
        assert "VIP" in shown.stdout

        activated = tierflow(pipeline, "activate", report["candidate_version"], "--note", "e2e")
        assert activated.returncode == 0, activated.stderr
        assert "activation 2" in activated.stdout

        cause = f"rule_set_activated:{report['candidate_version']}/2"
        expected = {
            (name, f, t): n
            for name, moves in report["dimensions"].items()
            for f, row in moves["matrix"].items()
            for t, n in row.items()
            if f != t
        }
        changes = await eventually(
            lambda: activation_changes(pipeline, cause),
            lambda found: Counter(found.values()) == expected,
            timeout=30,
            what="the activation's changes equal to the simulation's",
        )
        created = await eventually(
            lambda: actions_by_rule(client, pipeline.notifier.url, set(changes)),
            lambda found: found == Counter(report["care_actions"]),
            timeout=30,
            what="the notifier to create what the simulation said",
        )
        assert created["vip-account-manager"] == new_vips

        history = tierflow(pipeline, "history")
        assert history.returncode == 0, history.stderr
        assert report["candidate_version"] in history.stdout
        diff = tierflow(
            pipeline, "diff", report["candidate_version"], "--against", report["base_version"]
        )
        assert diff.returncode == 0, diff.stderr
        assert "params.vip_spend" in diff.stdout
